"""Output formats, --output, --statistics, and colors only on a terminal."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from initlint.cli import main
from initlint.render import FORMATS

from .projects import FC1_LINE, FC2_LINE, use_fake_rules, write_project

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())
ESC = "\033["


@pytest.fixture
def project(tmp_path, monkeypatch):
    use_fake_rules(monkeypatch)
    write_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_format_is_offered(project, capsys):
    assert sorted(FORMATS) == ["concise", "github", "json", "junit", "sarif", "text"]
    for fmt in FORMATS:
        code, out, _ = run(capsys, "--format", fmt)
        assert code == 1 and "IL901" in out, fmt


def test_sarif_is_valid_and_points_at_the_lines(project, capsys):
    code, out, _ = run(capsys, "--format", "sarif")
    log = json.loads(out)
    jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER).validate(log)
    (sarif_run,) = log["runs"]
    rules = sarif_run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["IL901", "IL902"]
    from initlint.registry import discover

    docs = {r.code: r for r in discover()}
    assert rules[0]["help"]["markdown"] == docs["IL901"].doc  # the rule's documentation is the help text
    assert rules[0]["shortDescription"]["text"] == docs["IL901"].summary
    assert [r["defaultConfiguration"]["level"] for r in rules] == ["warning", "note"]
    results = sarif_run["results"]
    located = [(r["ruleId"], r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
                r["locations"][0]["physicalLocation"]["region"]["startLine"])
               for r in results if "physicalLocation" in r.get("locations", [{}])[0]]
    assert located == [("IL901", "models.py", FC1_LINE), ("IL901", "models.py", FC2_LINE)]
    assert all(r["ruleIndex"] == [x["id"] for x in rules].index(r["ruleId"]) for r in results)
    assert sarif_run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == project.resolve().as_uri() + "/"
    assert sarif_run["invocations"] == [{"executionSuccessful": True}]

    # fingerprints do not move with the line
    prints = [r["partialFingerprints"]["initlint/v1"] for r in results]
    (project / "models.py").write_text("\n\n" + (project / "models.py").read_text())
    moved = json.loads(run(capsys, "--format", "sarif")[1])["runs"][0]["results"]
    assert [r["partialFingerprints"]["initlint/v1"] for r in moved] == prints
    assert moved[0]["locations"][0]["physicalLocation"]["region"]["startLine"] == FC1_LINE + 2


def test_sarif_reports_targets_that_fail_as_notifications(project, capsys):
    code, out, _ = run(capsys, "--format", "sarif", "models.py:Nope")
    log = json.loads(out)
    jsonschema.Draft7Validator(SCHEMA).validate(log)
    (invocation,) = log["runs"][0]["invocations"]
    assert code == 2 and invocation["executionSuccessful"] is False
    assert "has no attribute `Nope`" in invocation["toolExecutionNotifications"][0]["message"]["text"]


def test_github_annotations(project, capsys):
    code, out, _ = run(capsys, "--format", "github")
    lines = out.splitlines()
    assert code == 1 and len(lines) == 3
    assert lines[0].startswith(f"::warning file=models.py,line={FC1_LINE},"
                               "title=initlint IL901 (unit-normal-linear)::IL901 `fc1` weight has std ")
    assert "%0Ahelp: Initialize with std 1/sqrt(fan_in)" in lines[0]  # newlines escaped, one line each
    assert lines[1].startswith(f"::warning file=models.py,line={FC2_LINE},")
    assert lines[2] == ("::notice title=initlint IL902 (no-output-norm)::IL902 `Bad` has no normalization layer "
                        "(in models.py:Bad)")


def test_junit(project, capsys):
    code, out, _ = run(capsys, "--format", "junit")
    root = ET.fromstring(out)
    assert (root.tag, root.get("tests"), root.get("failures"), root.get("errors")) == ("testsuites", "4", "2", "0")
    bad, good = root.findall("testsuite")
    assert [c.get("name") for c in bad.findall("testcase")] == ["IL901 fc1", "IL901 fc2", "IL902 models.py:Bad"]
    first = bad.find("testcase")
    assert (first.get("file"), first.get("line")) == ("models.py", str(FC1_LINE))
    assert first.find("failure").get("type") == "IL901"
    assert bad.findall("testcase")[2].find("failure") is None  # info is below the fail level: passes
    assert [(c.get("name"), len(c)) for c in good.findall("testcase")] == [("no findings", 0)]
    # a stricter fail level turns the info finding into a failure too
    root = ET.fromstring(run(capsys, "--format", "junit", "--fail-level", "info")[1])
    assert root.get("failures") == "3"


def test_concise_is_one_line_per_finding_and_wraps_in_a_narrow_terminal(project, capsys):
    code, out, _ = run(capsys, "--format", "concise")
    lines = out.splitlines()
    assert lines[0].startswith(f"models.py:{FC1_LINE}: IL901 `fc1` weight has std")
    assert lines[2] == "models.py:Bad: IL902 `Bad` has no normalization layer"
    assert lines[3].startswith("Found 3 findings") and len(lines) == 4

    from initlint.render import RenderOptions, render
    from initlint.project import lint_project
    from initlint import config as config_mod

    report = lint_project(config_mod.load()).report
    narrow = render(report, "concise", RenderOptions(width=40)).splitlines()
    findings = narrow[:-1]
    assert all(len(line) <= 40 for line in findings), findings
    starts = [line for line in findings if not line.startswith("    ")]
    assert len(starts) == 3  # each finding starts at column 0; continuations are indented


def test_output_file_and_statistics(project, capsys):
    code, out, _ = run(capsys, "--format", "sarif", "--output", "out/initlint.sarif")
    assert (code, out) == (1, "")
    assert json.loads((project / "out" / "initlint.sarif").read_text())["version"] == "2.1.0"

    code, out, _ = run(capsys, "--statistics")
    assert code == 1
    assert out.splitlines()[:2] == ["2  IL901  unit-normal-linear               warning",
                                    "1  IL902  no-output-norm                   info"]
    code, out, _ = run(capsys, "--statistics", "--format", "json")
    assert json.loads(out) == [{"code": "IL901", "name": "unit-normal-linear", "severity": "warning", "count": 2},
                               {"code": "IL902", "name": "no-output-norm", "severity": "info", "count": 1}]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("no_color, tty, fmt, colored", [
    (None, False, "text", False),  # a pipe or a file: never
    (None, True, "text", True),
    (None, True, "concise", True),
    ("1", True, "text", False),  # https://no-color.org
    ("", True, "text", True),  # an empty NO_COLOR does not count
])
def test_color_only_on_a_terminal(project, monkeypatch, no_color, tty, fmt, colored):
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    stream = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr("sys.stdout", stream)
    assert main(["--format", fmt]) == 1
    assert (ESC in stream.getvalue()) is colored


def test_color_flags_override_detection(project, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout", stream)
    assert main(["--color", "always"]) == 1
    assert ESC in stream.getvalue()
    stream = _Terminal()
    monkeypatch.setattr("sys.stdout", stream)
    assert main(["--color", "never", "--output", "x.txt"]) == 1
    assert ESC not in (project / "x.txt").read_text()
