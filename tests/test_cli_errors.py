"""Bad input gets one clear error line (what, where, why) and a help line, exit code 2, no traceback."""

from __future__ import annotations

import textwrap

import pytest

from initlint.cli import main

GOOD = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)
"""

CASES = {
    "missing-module": ("", "nosuchpkg.models:Net", [], "cannot import module `nosuchpkg.models`"),
    "missing-file": ("", "nofile.py:Net", [], "file `nofile.py` does not exist"),
    "import-error-inside": ("import nosuchdep\n" + GOOD, "m.py:Net", [],
                            "cannot import `m.py` (m.py:1): ModuleNotFoundError: No module named 'nosuchdep'"),
    "syntax-error": ("def broken(:\n", "m.py:Net", [], "importing `m.py` raised an exception (m.py:1)"),
    "missing-attribute": (GOOD, "m.py:Nett", [], "module `m.py` has no attribute `Nett`"),
    "needs-arguments": (GOOD.replace("width=4", "width"), "m.py:Net", [], "cannot call `m.py:Net`"),
    "factory-raises": (GOOD + "\ndef make():\n    raise ValueError('no GPU config')\n", "m.py:make", [],
                       "building `m.py:make` raised an exception (m.py:14): ValueError: no GPU config"),
    "forward-raises": (GOOD.replace("return self.fc(x)", "raise RuntimeError('boom')"), "m.py:Net", [],
                       "`Net.forward` fails on the inferred example inputs ((2, 4) float32) (m.py:11): "
                       "RuntimeError: boom"),
    "not-a-model": (GOOD + "\nCONFIG = {'depth': 3}\n", "m.py:CONFIG", [], "target `m.py:CONFIG` is not a model"),
    "factory-returns-junk": (GOOD + "\ndef make():\n    return 42\n", "m.py:make", [],
                             "target `m.py:make` did not give a model: calling it returned int"),
    "shapes-do-not-fit": (GOOD, "m.py:Net", ["--input-shape", "2,5"],
                          "`Net.forward` fails on the given example inputs ((2, 5) float32)"),
    "cannot-infer": ("from torch import nn\nclass Net(nn.Module):\n    def forward(self, x):\n        return x\n",
                     "m.py:Net", [], "cannot infer example inputs for `m.py:Net`"),
    "bad-target-syntax": (GOOD, "m.py", [], "cannot parse target `m.py`"),
    "bad-arguments": (GOOD, "m.py:Net(4)", [], "cannot parse the arguments of target `m.py:Net(4)`"),
    "unknown-argument": (GOOD, "m.py:Net(depth=2)", [],
                         "cannot call `m.py:Net(depth=2)`: got an unexpected keyword argument 'depth'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capsys):
    source, target, extra, expected = CASES[case]
    if source:
        (tmp_path / "m.py").write_text(textwrap.dedent(source))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main([target, *extra])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and expected in lines[0], lines
    assert lines[1].lstrip().startswith("help: ")
    assert len(lines) == 2
    assert "Traceback" not in out + err


def test_verbose_shows_the_traceback(tmp_path, monkeypatch, capsys):
    (tmp_path / "m.py").write_text(GOOD.replace("return self.fc(x)", "raise RuntimeError('boom')"))
    monkeypatch.chdir(tmp_path)
    assert main(["m.py:Net", "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err


def test_other_targets_are_still_linted(tmp_path, monkeypatch, capsys):
    (tmp_path / "m.py").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    assert main(["m.py:Nope", "m.py:Net", "--format", "json"]) == 2
    import json

    data = json.loads(capsys.readouterr().out)
    assert [t["error"] is None for t in data["targets"]] == [False, True]
    assert data["targets"][0]["error"]["kind"] == "target"
    assert data["targets"][1]["capture"] == "fx"


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["m.py:Net", "--input-shape", "2,x"]) == 2
    assert main(["m.py:Net", "--select", "IL999"]) == 2
    err = capsys.readouterr().err
    assert "unknown rule selector `IL999`" in err


def test_internal_errors_say_they_are_bugs(tmp_path, monkeypatch, capsys):
    (tmp_path / "m.py").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    import initlint.capture as cap

    def broken(*a, **k):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cap, "capture", broken)
    assert main(["m.py:Net"]) == 2
    err = capsys.readouterr().err
    assert "internal error" in err and "bug in initlint" in err and "ZeroDivisionError: oops" in err
