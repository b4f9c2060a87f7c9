"""The command line end to end: golden output on the bundled examples, exit codes, --signals.

Snapshots live in tests/snapshots/ and are rewritten only on request: INITLINT_UPDATE_SNAPSHOTS=1.
"""

from __future__ import annotations

import json
import os

import pytest

from initlint.cli import main

SNAPSHOTS = os.path.join(os.path.dirname(__file__), "snapshots")
UPDATE = os.environ.get("INITLINT_UPDATE_SNAPSHOTS") == "1"


def _check_snapshot(name: str, text: str) -> None:
    path = os.path.join(SNAPSHOTS, name)
    if UPDATE or not os.path.exists(path):
        if not UPDATE:
            pytest.fail(f"no snapshot {name}: run with INITLINT_UPDATE_SNAPSHOTS=1 to write it")
        with open(path, "w") as fh:
            fh.write(text)
    with open(path) as fh:
        assert text == fh.read(), f"output differs from tests/snapshots/{name}"


@pytest.mark.parametrize("example", ["ResidualMLP", "CheckerboardGenerator", "PostLNEncoder", "HandDropoutMLP"])
def test_golden_text_output(example, capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    code = main([f"initlint.examples:{example}", "--color", "never"])
    out = capsys.readouterr().out
    assert code == 1
    _check_snapshot(f"{example}.txt", out)


def test_healthy_examples_pass(capsys):
    assert main(["initlint.examples:ScaledResidualMLP", "initlint.examples:PreLNEncoder",
                 "initlint.examples:SmallResNet", "initlint.examples:Generator"]) == 0
    assert capsys.readouterr().out.strip() == "All checks passed on 4 models."


def test_exit_codes_follow_fail_level_and_exit_zero(capsys):
    target = "initlint.examples:CheckerboardGenerator"  # two IL103 warnings
    assert main([target]) == 1
    assert main([target, "--fail-level", "error"]) == 0
    assert main([target, "--exit-zero"]) == 0
    assert main([target, "--ignore", "IL103"]) == 0
    capsys.readouterr()


def test_signals_in_json_and_text(capsys):
    assert main(["initlint.examples:ScaledResidualMLP", "--signals", "--format", "json"]) == 0
    (target,) = json.loads(capsys.readouterr().out)["targets"]
    rows = {row["op"]: row for row in target["signals"]}
    linear = next(r for r in target["signals"] if r["kind"] == "linear")
    assert set(linear) >= {"op", "module", "kind", "forward", "backward"}
    ratio = linear["forward"]["predicted"] / linear["forward"]["measured"]
    assert 1 / 1.5 <= ratio <= 1.5, ratio  # the engine's accuracy band (docs/engine.md)
    assert len(rows) >= 12 * 5
    assert main(["initlint.examples:ScaledResidualMLP", "--signals"]) == 0
    text = capsys.readouterr().out
    assert "predicted vs measured second moments" in text and "within x1.5" in text
