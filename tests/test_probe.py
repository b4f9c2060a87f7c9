"""The probe stage: state kept, one shared pass, joint fix verification with its one-by-one fallback, third-party
probes, initlint.fix, the command line and the configuration, devices, caps and the progress bar."""

from __future__ import annotations

import io
import json
import math
import textwrap

import pytest
import torch
from torch import nn

import initlint
from initlint import lint
from initlint.capture import capture_program
from initlint.cli import main
from initlint.errors import UsageError
from initlint.findings import Finding, ProbeStatus, Severity
from initlint.load import from_instance
from initlint.probe import ProbeOptions, _Progress, probe, resolve_device
from initlint.probes import Probe
from initlint.probes.records import Measurement
from initlint.probes.runner import Runnable, capped
from initlint.registry import rule

from .test_state import assert_same, snapshot


def hot_net():
    """A layer 100x too large before a BatchNorm, dropout, mixed modes, real .grad: IL101 (info) and state."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 64),
                          nn.ReLU(), nn.Linear(64, 10))
    nn.init.normal_(model[4].weight, std=1.0)
    model(torch.randn(8, 64)).sum().backward()
    model[6].bias.requires_grad_(False)
    model[3].eval()
    return model


def test_probe_leaves_the_model_exactly_as_it_was():
    model = hot_net()
    x = torch.randn(32, 64)
    before = snapshot(model)  # parameters, buffers, grads, requires_grad, modes, torch's and Python's RNG
    report = lint(model, x, select=["IL101", "IL303"], probe=True, device="cpu")
    assert report.targets[0].error is None
    f = next(f for f in report.findings if f.op == "_4")
    assert f.probe.status is ProbeStatus.CONFIRMED and f.probe.fix_verified is True
    assert_same(before, snapshot(model))


def test_a_rule_without_a_probe_is_skipped():
    model = nn.Sequential(nn.Linear(4, 4))
    target = from_instance(model, torch.randn(2, 4))
    graph, program = capture_program(target)
    f = Finding("IL999", "made-up", Severity.WARNING, "m", "_0", "0", None)
    (out,) = probe(target, graph, [f], program=program, options=ProbeOptions(device="cpu"))
    assert out.probe.status is ProbeStatus.SKIPPED and out.probe.fix_verified is None


def _weight_rule(code: str, measure, repair):
    @rule(code, f"test-{code.lower()}", probe=Probe(measure, repair=repair))
    def check(graph):
        """
        ## What it does
        A test rule.
        """

    return check


def test_third_party_probe_and_the_one_by_one_fallback():
    """A's fix zeroes the weight, B's doubles it and is verified only if the weight is nonzero: jointly (A
    first) B fails, alone it passes, and the result says so."""

    def zero(model, finding, graph):
        with torch.no_grad():
            model[0].weight.zero_()
        return ()

    def double(model, finding, graph):
        with torch.no_grad():
            model[0].weight.mul_(2.0)
        return ()

    def measure_a(ctx, finding):
        gone = ctx.before is not None and float(ctx.model[0].weight.detach().abs().sum()) == 0.0
        return Measurement({"weight_l1": float(ctx.model[0].weight.detach().abs().sum())},
                           ProbeStatus.NOT_REPRODUCED if gone else ProbeStatus.CONFIRMED)

    def measure_b(ctx, finding):
        l1 = float(ctx.model[0].weight.detach().abs().sum())
        fixed = ctx.before is not None and l1 > 0.0
        return Measurement({"weight_l1": l1}, ProbeStatus.NOT_REPRODUCED if fixed else ProbeStatus.CONFIRMED)

    rules = [_weight_rule("IL901", measure_a, zero), _weight_rule("IL902", measure_b, double)]
    model = nn.Sequential(nn.Linear(4, 4))
    target = from_instance(model, torch.randn(2, 4))
    graph, program = capture_program(target)
    findings = [Finding(r.code, r.name, Severity.WARNING, "m", "_0", "0", None) for r in rules]
    a, b = probe(target, graph, findings, program=program, options=ProbeOptions(device="cpu"), rules=rules)
    assert a.probe.fix_verified is True and a.probe.after_fix["weight_l1"] == 0.0
    assert b.probe.fix_verified is True and b.probe.after_fix["weight_l1"] > 0.0
    assert "fix verified alone" in b.probe.detail
    assert float(model[0].weight.abs().sum()) > 0.0  # the repairs ran on copies


def test_the_built_in_table_wins_over_a_rule_probe():
    from initlint.probes import PROBES, probe_for

    other = Probe(lambda ctx, f: Measurement({}, ProbeStatus.CONFIRMED))
    assert probe_for("IL201", other) is PROBES["IL201"] and probe_for("IL998", other) is other


def test_fixes_are_verified_jointly_on_one_copy():
    """IL301's example: five x10 layers give IL101 five times, IL104, IL301 and IL303, all fixed by one copy."""
    torch.manual_seed(0)
    layers = [nn.Linear(256, 256, bias=False) for _ in range(5)]
    for layer in layers:
        nn.init.normal_(layer.weight, std=10 / 256**0.5)
    model = nn.Sequential(*layers, nn.Linear(256, 32))
    report = lint(model, torch.randn(32, 256), probe=True, device="cpu")
    codes = sorted({f.code for f in report.findings})
    assert {"IL101", "IL104", "IL301", "IL303"} <= set(codes), codes
    for f in report.findings:
        assert f.probe.status is ProbeStatus.CONFIRMED, (f.code, f.op, f.probe.detail)
        assert f.probe.fix_verified is True and "alone" not in f.probe.detail, (f.code, f.probe.detail)


def test_fix_returns_a_repaired_copy():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    nn.init.normal_(model[0].weight, std=1.0)
    x = torch.randn(32, 64)
    report = lint(model, x, select=["IL101"])
    fixed = initlint.fix(model, report)
    assert type(fixed) is nn.Sequential and fixed is not model
    assert float(model[0].weight.std()) > 0.5, "the original is untouched"
    assert abs(float(fixed[0].weight.std()) - math.sqrt(2 / 64)) < 0.02
    assert not lint(fixed, x, select=["IL101"]).findings


def test_fix_with_an_inserted_scale_returns_a_graph_module():
    from tests.probes.test_variance import multipath

    model = multipath()
    x = torch.randn(4, 16, 12, 12)
    report = lint(model, x, select=["IL202"])
    fixed = initlint.fix(model, report, x)
    assert isinstance(fixed, torch.fx.GraphModule)
    assert not lint(fixed, x, select=["IL202"]).findings
    scale = report.findings[0].predicted["factor"] ** -0.5  # about 1/2: four zero-mean branches
    assert torch.allclose(fixed(x), model[1](model[0](x) * scale), atol=1e-5)


def test_fix_needs_a_linted_report():
    with pytest.raises(UsageError):
        initlint.fix(nn.Linear(2, 2), initlint.Report(()))


def test_capped_inputs():
    model = nn.Conv2d(3, 4, 3)
    target = from_instance(model, torch.randn(100, 3, 80, 70))
    graph, program = capture_program(target)
    run = capped(Runnable.of(program, graph), max_batch=32, max_spatial=64)
    assert tuple(run.inputs.args[0].shape) == (32, 3, 64, 64)


class Flat(nn.Module):
    """Needs its full spatial size: the probe's cap breaks it and the stage runs it uncapped."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 80 * 80, 10)
        nn.init.normal_(self.conv.weight, std=3.0)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_a_model_the_cap_breaks_runs_uncapped():
    torch.manual_seed(0)
    (f,) = [f for f in lint(Flat(), torch.randn(2, 3, 80, 80), select=["IL101"], probe=True, device="cpu").findings
            if f.op == "conv"]
    assert f.probe.status is ProbeStatus.CONFIRMED and f.probe.fix_verified is True


def test_device_resolution():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device"):
            resolve_device("cuda")


def test_progress_bar_on_a_terminal_only_after_a_while(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("initlint.probe.PROGRESS_AFTER", 0.0)
    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = _Progress(4, None, stream)
        bar.step()
        bar.step()
        bar.close()
    assert "initlint: probing [" in tty.getvalue() and "2/4" in tty.getvalue()
    assert tty.getvalue().endswith("\r") and pipe.getvalue() == ""
    monkeypatch.setattr("initlint.probe.PROGRESS_AFTER", 60.0)
    quick = Tty()
    bar = _Progress(4, None, quick)
    bar.step()
    bar.close()
    assert quick.getvalue() == ""  # done within the second: nothing drawn


MODEL = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    nn.init.normal_(model[0].weight, std=1.0)
    return model, torch.randn(32, 64)
"""


def test_cli_probe_in_json_and_text(tmp_path, monkeypatch, capsys):
    (tmp_path / "m.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path)
    assert main(["m.py:build", "--select", "IL101", "--probe", "--device", "cpu", "--format", "json",
                 "--isolated"]) == 1
    (f,) = json.loads(capsys.readouterr().out)["targets"][0]["findings"]
    assert f["probe"]["status"] == "confirmed" and f["probe"]["fix_verified"] is True
    assert f["probe"]["measured"]["factor"] > 10
    main(["m.py:build", "--select", "IL101", "--probe", "--device", "cpu", "--isolated"])
    assert "probe: confirmed (" in capsys.readouterr().out


def test_config_probe_true_runs_the_probes(tmp_path, monkeypatch, capsys):
    (tmp_path / "m.py").write_text(MODEL)
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.initlint]
        targets = ["m.py:build"]
        select = ["IL101"]
        probe = true
        device = "cpu"
    """))
    monkeypatch.chdir(tmp_path)
    main(["--format", "json"])
    (f,) = json.loads(capsys.readouterr().out)["targets"][0]["findings"]
    assert f["probe"]["status"] == "confirmed"
    main(["--format", "json", "--isolated", "m.py:build", "--select", "IL101"])
    (f,) = json.loads(capsys.readouterr().out)["targets"][0]["findings"]
    assert f["probe"]["status"] == "skipped"  # without probe = true, no probe runs


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probe_on_cuda_confirms_and_keeps_the_model_on_its_device():
    model = hot_net()
    before = snapshot(model)
    report = lint(model, torch.randn(32, 64), select=["IL101"], probe=True, device="cuda")
    f = next(f for f in report.findings if f.op == "_4")
    assert f.probe.status is ProbeStatus.CONFIRMED and f.probe.fix_verified is True
    assert next(model.parameters()).device.type == "cpu"
    assert_same(before, snapshot(model))


# -- every built-in rule ------------------------------------------------------------------------------------

from initlint.probes import PROBES  # noqa: E402
from initlint.rules import BUILTIN_RULES  # noqa: E402

# The transformer examples go through torch.export (seconds each); test_gradients covers them on a smaller stack.
SLOW_EXAMPLES = {"IL107", "IL204"}


def test_every_built_in_rule_has_a_probe_with_a_repair():
    missing = sorted(r.code for r in BUILTIN_RULES if r.code not in PROBES)
    assert not missing, f"rules without a probe: {missing}"
    assert all(PROBES[r.code].repair is not None for r in BUILTIN_RULES)


@pytest.mark.parametrize("code", [pytest.param(r.code, marks=pytest.mark.slow) if r.code in SLOW_EXAMPLES
                                  else r.code for r in BUILTIN_RULES])
def test_the_documented_example_is_confirmed_and_its_fix_verified(code):
    r = next(r for r in BUILTIN_RULES if r.code == code)
    namespace: dict = {}
    exec(compile(r.code_blocks("Example")[0], f"<{code} example>", "exec"), namespace)
    report = lint(namespace["model"], namespace.get("example_inputs"), select=[code], probe=True, device="cpu")
    found = [f for f in report.findings if f.code == code]
    assert found, f"{code}'s example has no finding"
    for f in found:
        assert f.probe.status is ProbeStatus.CONFIRMED, (f.op, dict(f.probe.measured), f.probe.detail)
        assert f.probe.fix_verified is True, (f.op, dict(f.probe.after_fix), f.probe.detail)
