"""Suppressions: comments on the finding's line, per-file ignores, and a baseline of existing findings."""

from __future__ import annotations

import json
import pathlib

import pytest

from initlint.cli import main
from initlint.suppress import ALL, noqa_codes

from .projects import FC1_LINE, FC2_LINE, edit_line, use_fake_rules, write_project


@pytest.mark.parametrize("line, codes", [
    ("x = f(x)", frozenset()),
    ("x = f(x)  # noqa: IL201", {"IL201"}),
    ("x = f(x)  # NOQA:IL201,IL102", {"IL201", "IL102"}),
    ("x = f(x)  # noqa: IL201 IL102  (why)", {"IL201", "IL102"}),
    ("x = f(x)  # noqa", ALL),
    ("x = f(x)  # noqa: E501  # initlint: ignore[unscaled-residual, IL1]", {"E501", "unscaled-residual", "IL1"}),
    ("x = f(x)  # initlint: ignore", ALL),
    ("x = f(x)  # initlint: ignore[]", ALL),
])
def test_comment_parsing(line, codes):
    assert noqa_codes(line) == codes


def _lint_json(capsys, *args) -> tuple[int, list[tuple[str, int | None]]]:
    code = main(["--format", "json", *args])
    data = json.loads(capsys.readouterr().out)
    found = [(f["code"], f["location"]["line"] if f["location"] else None)
             for t in data["targets"] for f in t["findings"]]
    return code, found


@pytest.fixture
def project(tmp_path, monkeypatch):
    use_fake_rules(monkeypatch)
    write_project(tmp_path, '[tool.initlint]\ntargets = ["models.py:Bad"]\nselect = ["IL9"]\nignore = ["IL902"]\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


BOTH = [("IL901", FC1_LINE), ("IL901", FC2_LINE)]


@pytest.mark.parametrize("comment, remaining", [
    ("  # noqa: IL901", [("IL901", FC1_LINE)]),
    ("  # noqa", [("IL901", FC1_LINE)]),
    ("  # initlint: ignore[unit-normal-linear]", [("IL901", FC1_LINE)]),
    ("  # initlint: ignore[IL9]", [("IL901", FC1_LINE)]),
    ("  # noqa: IL902", BOTH),  # another rule's code
    ("  # noqa: E501", BOTH),  # another tool's code
])
def test_a_comment_on_the_line_silences_the_finding_there(project, capsys, comment, remaining):
    assert _lint_json(capsys) == (1, BOTH)
    edit_line(project / "models.py", FC2_LINE, comment)
    assert _lint_json(capsys) == (1, remaining)
    edit_line(project / "models.py", FC1_LINE, comment)
    assert _lint_json(capsys)[1] == ([] if remaining != BOTH else BOTH)


def test_each_file_is_read_once(project, capsys, monkeypatch):
    reads = []
    real = pathlib.Path.read_text

    def counting(self, *args, **kwargs):
        if self.name == "models.py":
            reads.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", counting)
    assert _lint_json(capsys) == (1, BOTH)
    assert len(reads) == 1, reads  # two findings in models.py, one read


def test_per_file_ignores(project, capsys):
    (project / "pyproject.toml").write_text('[tool.initlint]\ntargets = ["models.py:Bad"]\nselect = ["IL9"]\nignore = ["IL902"]\n'
                                            '[tool.initlint.per-file-ignores]\n"other.py" = ["IL901"]\n')
    assert _lint_json(capsys) == (1, BOTH)
    (project / "pyproject.toml").write_text('[tool.initlint]\ntargets = ["models.py:Bad"]\nselect = ["IL9"]\nignore = ["IL902"]\n'
                                            '[tool.initlint.per-file-ignores]\n"mod*.py" = ["unit-normal-linear"]\n')
    assert _lint_json(capsys) == (0, [])


def test_baseline_reports_only_new_findings(project, capsys):
    (project / "pyproject.toml").write_text('[tool.initlint]\ntargets = ["models.py:Bad"]\nselect = ["IL9"]\n')
    assert main(["--baseline", "base.json"]) == 2
    assert "baseline file" in capsys.readouterr().err and not (project / "base.json").exists()
    assert main(["--update-baseline"]) == 2  # no file named anywhere
    assert "--update-baseline needs a baseline file" in capsys.readouterr().err

    assert main(["--baseline", "base.json", "--update-baseline"]) == 0
    assert "Recorded 3 findings in base.json" in capsys.readouterr().err
    entries = json.loads((project / "base.json").read_text())["findings"]
    assert [(e["code"], e["file"], e["op"], e["count"]) for e in entries] == [
        ("IL901", "models.py", "fc1", 1), ("IL901", "models.py", "fc2", 1), ("IL902", "", "", 1)]
    assert _lint_json(capsys, "--baseline", "base.json") == (0, [])

    # moving the code does not make its findings new
    models = project / "models.py"
    models.write_text("# a new header line\n\n" + models.read_text())
    assert _lint_json(capsys, "--baseline", "base.json") == (0, [])

    # a third defective layer is new: only it is reported
    source = models.read_text()
    source = source.replace("        self.fc2 = nn.Linear(32, 32)\n",
                            "        self.fc2 = nn.Linear(32, 32)\n        self.fc3 = nn.Linear(32, 32)\n"
                            "        nn.init.normal_(self.fc3.weight)\n")
    source = source.replace("return self.fc2(x)", "return self.fc3(self.fc2(x))")
    models.write_text(source)
    assert _lint_json(capsys, "--baseline", "base.json") == (1, [("IL901", FC2_LINE + 4)])

    # the baseline can live in [tool.initlint] too
    (project / "pyproject.toml").write_text('[tool.initlint]\ntargets = ["models.py:Bad"]\nselect = ["IL9"]\nbaseline = "base.json"\n')
    assert _lint_json(capsys) == (1, [("IL901", FC2_LINE + 4)])
    (project / "base.json").write_text('{"findings": []}')
    assert main([]) == 2
    assert "is not an initlint baseline" in capsys.readouterr().err
