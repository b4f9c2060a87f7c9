"""[tool.initlint]: found by walking up, validated key by key, overridden by the command line."""

from __future__ import annotations

import json
import textwrap

import pytest

from initlint import config as config_mod
from initlint.cli import main
from initlint.errors import ConfigError
from initlint.findings import Severity

from .projects import use_fake_rules, write_project

FULL = textwrap.dedent('''\
    [tool.initlint]
    targets = [
        "models.py:Bad",
        { target = "models.py:Good", name = "good", input-shape = [[2, 32]], input-dtype = "float32", select = ["IL9"], ignore = ["no-output-norm"], capture = "hooks" },
    ]
    select = ["IL"]
    ignore = ["IL102"]
    fail-level = "error"
    probe = true
    device = "cuda:1"
    baseline = "base/line.json"
    capture = "fx"

    [tool.initlint.per-file-ignores]
    "legacy/*.py" = ["IL201", "unscaled-residual"]

    [tool.initlint.severity]
    IL201 = "error"
    no-output-norm = "warning"
''')


def test_every_key_is_read(tmp_path):
    (tmp_path / "pyproject.toml").write_text(FULL)
    cfg = config_mod.load(tmp_path / "pyproject.toml")
    bad, good = cfg.targets
    assert (bad.target, bad.name, bad.input_shapes) == ("models.py:Bad", "models.py:Bad", None)
    assert (good.name, good.input_shapes, good.input_dtypes) == ("good", ((2, 32),), ("float32",))
    assert (good.select, good.ignore, good.capture) == (("IL9",), ("no-output-norm",), "hooks")
    assert (cfg.select, cfg.ignore, cfg.fail_level) == (("IL",), ("IL102",), Severity.ERROR)
    assert (cfg.probe, cfg.device, cfg.capture) == (True, "cuda:1", "fx")
    assert cfg.baseline == tmp_path.resolve() / "base" / "line.json"
    assert cfg.per_file_ignores == (("legacy/*.py", ("IL201", "unscaled-residual")),)
    assert dict(cfg.severity) == {"IL201": Severity.ERROR, "no-output-norm": Severity.WARNING}
    # a target's own settings go over the project's; ignores add up
    opts = cfg.lint_options(good)
    assert (opts["select"], opts["ignore"], opts["capture"]) == (["IL9"], ["IL102", "no-output-norm"], "hooks")
    assert opts["input_shapes"] == [[2, 32]]
    assert cfg.lint_options(bad)["select"] == ["IL"]


def test_the_nearest_file_with_the_table_wins(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.initlint]\nselect = ["IL1"]\n')
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "pyproject.toml").write_text('[project]\nname = "pkg"\n')  # no table: skipped
    (tmp_path / "pkg" / "sub").mkdir()
    assert config_mod.find(tmp_path / "pkg" / "sub") == tmp_path.resolve() / "pyproject.toml"
    (tmp_path / "pkg" / "sub" / "pyproject.toml").write_text('[tool.initlint]\nselect = ["IL2"]\n')
    assert config_mod.load(start=tmp_path / "pkg" / "sub").select == ("IL2",)
    assert config_mod.load(start=tmp_path / "pkg").select == ("IL1",)
    assert config_mod.load(start=tmp_path, isolated=True).select is None


BAD = {
    "unknown-key": ('fail_level = "error"', "unknown key `fail_level` in [tool.initlint] (pyproject.toml:2): "
                    "did you mean `fail-level`?"),
    "unknown-target-key": ('targets = [{target = "m.py:Net", input_shape = [[2, 4]]}]',
                           "unknown key `input_shape` in `targets[0]`"),
    "bad-fail-level": ('fail-level = "fatal"', "`fail-level` must be one of info, warning, error"),
    "target-not-a-string": ("targets = [42]", "`targets` has an invalid target 42"),
    "target-without-colon": ('targets = ["models.Net"]', "`targets` has an invalid target 'models.Net'"),
    "target-table-no-target": ('targets = [{name = "x"}]', "`targets[0]` has no `target`"),
    "duplicate-names": ('targets = ["m.py:Net", {target = "m.py:Net", input-shape = [2, 4]}]',
                        "target `m.py:Net` appears twice"),
    "negative-shape": ('targets = [{target = "m.py:Net", input-shape = [[2, -1]]}]',
                       "`input-shape` must be a list of shapes of positive integers"),
    "bad-device": ('device = "gpu"', "`device` must name a torch device"),
    "probe-not-bool": ('probe = "yes"', "`probe` must be true or false"),
    "select-not-list": ("select = 3", "`select` must be a list of rule selectors"),
    "bad-selector": ('ignore = ["E501"]', "`ignore` has an invalid entry `E501`"),
    "per-file-not-table": ('per-file-ignores = ["a.py"]', "`per-file-ignores` must be a table"),
    "bad-severity": ('[tool.initlint.severity]\nIL201 = "fatal"', "`severity.IL201` must be one of"),
    "bad-severity-rule": ('[tool.initlint.severity]\nE501 = "error"', "`severity` has an invalid rule `E501`"),
    "bad-capture": ('capture = "trace"', "`capture` must be one of fx, export, hooks"),
    "not-toml": ("targets = [", "`pyproject.toml` is not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_one_error_and_exit_2(case, tmp_path, monkeypatch, capsys):
    body, expected = BAD[case]
    (tmp_path / "pyproject.toml").write_text(f"[tool.initlint]\n{body}\n")
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("error: ") and expected in lines[0], lines
    assert len(lines) == 2 and lines[1].lstrip().startswith("help: "), lines


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        config_mod.parse({"prob": True}, source="x.toml")
    assert "did you mean `probe`?" in info.value.line
    assert info.value.help == f"known keys: {', '.join(config_mod.KEYS)}"


def test_configured_targets_are_linted_when_none_are_given(tmp_path, monkeypatch, capsys):
    use_fake_rules(monkeypatch)
    write_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [t["target"] for t in data["targets"]] == ["models.py:Bad", "models.py:Good"]
    assert [f["code"] for f in data["targets"][0]["findings"]] == ["IL901", "IL901", "IL902"]
    assert data["targets"][1]["findings"] == []


def test_command_line_overrides_the_file(tmp_path, monkeypatch, capsys):
    use_fake_rules(monkeypatch)
    write_project(tmp_path, '[tool.initlint]\ntargets = ["models.py:Bad"]\nselect = ["IL9"]\nfail-level = "error"\nignore = ["IL902"]\n')
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0  # two warnings, fail-level error
    assert main(["--fail-level", "warning"]) == 1
    assert main(["--fail-level", "info", "--ignore", "IL901"]) == 0  # file's ignore (IL902) still applies
    assert main(["--fail-level", "info", "--select", "IL902"]) == 1  # a fresh selection drops the file's ignore
    capsys.readouterr()
    assert main(["--isolated"]) == 2  # no configuration: no targets
    assert "no target given" in capsys.readouterr().err


def test_severity_overrides_and_per_target_inputs(tmp_path, monkeypatch, capsys):
    use_fake_rules(monkeypatch)
    # `Echo` has no layer to infer its inputs from: the target's input-shape is what makes it lintable
    models = "from torch import nn\nclass Echo(nn.Module):\n    def forward(self, x):\n        return x * 2\n"
    write_project(tmp_path, textwrap.dedent('''\
        [tool.initlint]
        targets = [{target = "models.py:Echo", input-shape = [[2, 4]]}]
        fail-level = "error"
        [tool.initlint.severity]
        no-output-norm = "error"
    '''), models=models)
    monkeypatch.chdir(tmp_path)
    assert main(["--format", "json"]) == 1
    (finding,) = json.loads(capsys.readouterr().out)["targets"][0]["findings"]
    assert (finding["code"], finding["severity"]) == ("IL902", "error")


def test_config_option_reads_a_standalone_file_and_paths_resolve_from_it(tmp_path, monkeypatch, capsys):
    use_fake_rules(monkeypatch)
    write_project(tmp_path / "proj", pyproject="")
    (tmp_path / "proj" / "initlint.toml").write_text('targets = ["models.py:Good"]\n')
    monkeypatch.chdir(tmp_path)
    assert main(["--config", "proj/initlint.toml", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(t["target"], t["error"]) for t in data["targets"]] == [("models.py:Good", None)]
    # from a subfolder, the nearest pyproject.toml is found and its relative target paths still work
    write_project(tmp_path / "proj")
    (tmp_path / "proj" / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "proj" / "deep" / "er")
    assert main(["--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(t["target"], t["error"]) for t in data["targets"]] == [("models.py:Bad", None), ("models.py:Good", None)]
    assert main(["--config", "nowhere.toml"]) == 2
    assert "cannot read config file `nowhere.toml`" in capsys.readouterr().err


def test_command_line_targets_are_relative_to_the_working_directory(tmp_path, monkeypatch, capsys):
    use_fake_rules(monkeypatch)
    write_project(tmp_path)
    local = "from torch import nn\nclass Local(nn.Module):\n    def forward(self, x):\n        return x * 2\n"
    write_project(tmp_path / "sub", pyproject="", models=local)  # sub/models.py, no config of its own
    monkeypatch.chdir(tmp_path / "sub")
    # models.py here is sub/models.py, even with the project's config (and --input-shape) in force
    assert main(["models.py:Local", "--input-shape", "2,32", "--format", "json"]) == 0  # IL902 (info) only
    data = json.loads(capsys.readouterr().out)
    assert [(t["target"], t["error"]) for t in data["targets"]] == [("models.py:Local", None)]
    assert main(["--format", "json"]) == 1  # the configured targets, relative to the config file
    assert [t["error"] for t in json.loads(capsys.readouterr().out)["targets"]] == [None, None]
