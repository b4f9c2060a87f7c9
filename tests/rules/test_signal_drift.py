"""IL303 signal-drift: forward or backward second moment compounding away over un-normalized layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity
from initlint.patterns import sig

# The stretch's factors over 4096 unit-Gaussian rows against the prediction: each Linear-ReLU's prediction is
# within about 2% of its measurement, six of them compound (measured 8.29e-4 vs 8.39e-4 forward, 2.26e-5 vs
# 2.27e-5 backward on seed 0).
FACTOR_TOL = 0.1
# (1/6)^6 against the engine: the biases shift the pre-activations so that more than half the units pass a ReLU
# (6% over six layers), and each weight sample is within 1% of its expectation.
DEFAULT_INIT_TOL = 0.1
# 32^3 for three Linear-ReLU layers at std 0.5 on width 256: the three weight samples and the biases' share.
GROWTH_TOL = 0.15


def mlp(hidden=6, width=256, init=None, norm=False, seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(hidden):
        layer = nn.Linear(width, width)
        if init is not None:
            init(layer)
        layers += [layer, nn.ReLU()]
    tail = [nn.LayerNorm(width)] if norm else []
    return nn.Sequential(*layers, *tail, nn.Linear(width, 10)), torch.randn(32, width)


def kaiming(layer):
    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    nn.init.zeros_(layer.bias)


def findings(model, inputs):
    report = lint(model, inputs, select=["IL303"])
    assert report.targets[0].error is None, report.targets[0].error
    return report.findings


def test_a_default_init_mlp_drifts_and_names_its_layers():
    model, x = mlp()
    (f,) = findings(model, x)
    p = f.predicted
    assert f.severity is Severity.WARNING and f.op == "_10" and p["layers"] == 6
    # E[w^2] = 1/(3 fan_in) and ReLU's 1/2, six times
    assert p["backward_factor"] == pytest.approx((1 / 6) ** 6, rel=DEFAULT_INIT_TOL)
    assert p["forward_factor"] > p["backward_factor"]  # the forward stops shrinking where the biases take over
    top = ", ".join(f"`{op[1:]}` with its relu (x{sig(a)} forward, x{sig(b)} backward)"
                    for op, a, b in zip(p["top_ops"], p["top_forward"], p["top_backward"]))
    assert f.message == (
        f"the 6 weight layers from `0` to `10`, with no normalization before the model output, change the forward "
        f"second moment x{sig(p['forward_factor'])} and the gradient's x{sig(p['backward_factor'])}; most from {top}"
    )
    assert all(b < 1 / 5 for b in p["top_backward"])  # 1/3 per default Linear times 1/2 per ReLU


def test_the_factors_printed_are_measured():
    model, _ = mlp()
    (f,) = findings(model, torch.randn(32, 256))
    x = torch.randn(4096, 256, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    h = model[:12](x)  # the stretch ends at the last hidden ReLU; the head is not part of it
    h.retain_grad()
    y = model[12](h)
    (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    forward = h.square().mean().item() / x.square().mean().item()
    backward = x.grad.square().mean().item() / h.grad.square().mean().item()  # same number of elements
    assert forward == pytest.approx(f.predicted["forward_factor"], rel=FACTOR_TOL)
    assert backward == pytest.approx(f.predicted["backward_factor"], rel=FACTOR_TOL)


def test_the_fix_silences_the_rule():
    model, x = mlp()
    (f,) = findings(model, x)
    assert f.fix.code.count("nn.init.normal_(") == 6
    assert f.fix.code.splitlines()[0].startswith('nn.init.normal_(model.get_parameter("0.weight"), mean=0.0, std=0.0884)')
    torch.manual_seed(1)
    exec(f.fix.code, {"nn": nn, "model": model})
    assert findings(model, x) == []


def test_a_stretch_ending_in_a_norm_is_info_and_growth_counts_too():
    model, x = mlp(norm=True)
    (f,) = findings(model, x)
    assert f.severity is Severity.INFO and "before `12`" in f.message
    large, x = mlp(hidden=3, init=lambda layer: nn.init.normal_(layer.weight, std=0.5))  # 0.5^2 * 256 / 2 = 32
    (f,) = findings(large, x)
    assert f.severity is Severity.WARNING
    assert f.predicted["forward_factor"] == pytest.approx(32.0**3, rel=GROWTH_TOL)


def test_healthy_inits_are_clean():
    model, x = mlp(hidden=12, init=kaiming)
    assert findings(model, x) == []

    class PreLN(nn.Module):  # small branches added to a stream: not followed into the branch
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64), nn.ReLU(),
                                                      nn.Linear(64, 64)) for _ in range(4))
            for b in self.blocks:
                for m in (b[1], b[3]):
                    nn.init.normal_(m.weight, std=0.001)

        def forward(self, x):
            for b in self.blocks:
                x = x + b(x)
            return x

    assert findings(PreLN(), torch.randn(8, 64)) == []


def test_near_misses_three_default_layers_and_one_bad_layer():
    assert findings(*mlp(hidden=3)) == []  # 1/6^3 = 1/216, but 1/36 without the largest: not compounding
    assert len(findings(*mlp(hidden=4))) == 1
    model, x = mlp(hidden=4, init=kaiming)
    nn.init.normal_(model[2].weight, std=1e-5)  # one layer 1e-7 off: IL101's finding, not a drift
    assert findings(model, x) == []


def test_zero_weight_layers_are_no_crash():
    """Found by the fuzzer: zero-initialized layers leave a stretch with no weight layer to name."""
    import torch
    from torch import nn

    from initlint import lint

    model = nn.Sequential(nn.Linear(16, 16), nn.Tanhshrink(), nn.Linear(16, 16), nn.Tanhshrink(), nn.Linear(16, 4))
    nn.init.zeros_(model[0].weight)
    nn.init.zeros_(model[2].weight)
    target = lint(model, torch.randn(8, 16), select=["IL303"]).targets[0]
    assert target.error is None, target.error


def test_each_op_is_walked_once_whatever_the_depth(monkeypatch):
    """Each norm of a Pre-LN stream ends a stretch whose signal path is the whole stream before it: the rule walks
    the paths' forest once, each op once (linear in depth), not every path from its end (quadratic: 19 s for a
    1000-block transformer). Same for a deep MLP, whose one stretch is the whole model."""
    import sys

    from benchmarks.scale import mlp as deep_mlp
    from benchmarks.scale import transformer
    from initlint.registry import discover

    module = sys.modules[next(r for r in discover() if r.code == "IL303").check.__module__]
    advance, walked = module._advance, []
    monkeypatch.setattr(module, "_advance", lambda graph, state, prev, op: walked.append(op.name)
                        or advance(graph, state, prev, op))
    for model, inputs in (transformer(12), deep_mlp(40)):
        walked.clear()
        findings(model, inputs)
        assert walked and len(walked) == len(set(walked))
