"""IL302 saturated-activation: bounded activations whose predicted input saturates half their units or more."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity
from initlint.patterns import sig

TANH_KNEE = 1.8185  # tanh' = sech^2 falls below 0.1 beyond |x| = acosh(sqrt(10)) = 1.8184
SIGMOID_KNEE = 3.636  # sigmoid' below 0.025 (a tenth of its peak) beyond 3.636
# The saturated fraction and the slope's second moment over 20,000 rows against the prediction: the input's
# sample std is within 1% of the predicted one, which moves the fraction by about 1.5 points (measured 64.4%
# against 65.9% on the docs' Example).
FRACTION_TOL = 0.03
SLOPE_TOL = 0.05
# The knee as found on a grid of spacing 5e-4.
KNEE_TOL = 1e-3
# The first layer's output std over 20,000 rows against the prediction: within the weights' and the sample's
# spread, about 1%; after the fix, the redrawn weights add 1% more.
STD_TOL = 0.02
FIXED_STD_TOL = 0.05
# A bias set to 5.0 exactly dominates the input's mean: the weights' sample mean moves it by under 0.1%.
MEAN_TOL = 0.01


def tanh_net(std=0.5, act=nn.Tanh, seed=0, bias=True):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128, bias=bias), act(), nn.Linear(128, 10))
    nn.init.normal_(model[0].weight, std=std)
    return model, torch.randn(32, 64)


def findings(model, inputs):
    report = lint(model, inputs, select=["IL302"])
    assert report.targets[0].error is None, report.targets[0].error
    return report.findings


def measure(model, fn_slope, knee, n=20000):
    x = torch.randn(n, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = model[0](x)
    return (h.abs() > knee).float().mean().item(), fn_slope(h).square().mean().item(), h.std().item()


def test_a_saturated_tanh_layer():
    model, x = tanh_net(0.5)  # input std 0.5 * sqrt(64) = 4
    (f,) = findings(model, x)
    p = f.predicted
    assert f.severity is Severity.WARNING and f.op == "_1"
    assert p["knee"] == pytest.approx(TANH_KNEE, abs=KNEE_TOL)
    assert f.message == (
        f"`1` (tanh) has predicted input std {sig(p['input_std'])}: {sig(100 * p['saturated_fraction'], 2)}% of its "
        f"units are saturated (slope below 0.1 of its peak, |x| > 1.82), and the gradient's second moment through "
        f"it is {sig(p['gradient_factor'], 2)}x what it is in the linear range"
    )
    fraction, slope, std = measure(model, lambda h: 1 - torch.tanh(h) ** 2, TANH_KNEE)
    assert std == pytest.approx(p["input_std"], rel=STD_TOL)
    assert fraction == pytest.approx(p["saturated_fraction"], abs=FRACTION_TOL)
    assert slope == pytest.approx(p["gradient_factor"], rel=SLOPE_TOL)


def test_the_fix_brings_the_input_to_half_the_knee():
    model, x = tanh_net(0.5)
    (f,) = findings(model, x)
    assert f.fix.code.startswith('nn.init.normal_(model.get_parameter("0.weight"), mean=0.0, std=')
    torch.manual_seed(2)
    exec(f.fix.code, {"nn": nn, "model": model})
    assert findings(model, x) == []
    fraction, _, std = measure(model, lambda h: 1 - torch.tanh(h) ** 2, TANH_KNEE)
    assert std == pytest.approx(TANH_KNEE / 2, rel=FIXED_STD_TOL)
    assert fraction == pytest.approx(math.erfc(2 / math.sqrt(2)), abs=FRACTION_TOL)  # |z| > 2: 4.6%


def test_nearly_all_saturated_is_an_error():
    model, x = tanh_net(2.5)  # input std 20: 93% saturated
    (f,) = findings(model, x)
    assert f.severity is Severity.ERROR and f.predicted["saturated_fraction"] > 0.9


def test_a_sigmoid_gate_pushed_to_one_side_by_its_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Sigmoid(), nn.Linear(128, 1))
    nn.init.normal_(model[0].weight, std=0.05)
    nn.init.constant_(model[0].bias, 5.0)  # input mean 5, std 0.4: nearly all beyond the knee at 3.64
    (f,) = findings(model, torch.randn(32, 64))
    assert f.predicted["input_mean"] == pytest.approx(5.0, rel=MEAN_TOL)
    assert f.predicted["knee"] == pytest.approx(SIGMOID_KNEE, abs=KNEE_TOL)
    assert ", mean 5" in f.message and f.severity is Severity.ERROR
    assert 'nn.init.zeros_(model.get_parameter("0.bias"))' in f.fix.code


def test_standard_inits_are_clean():
    inits = (lambda w: nn.init.xavier_normal_(w, gain=nn.init.calculate_gain("tanh")), nn.init.xavier_normal_,
             lambda w: w)  # the last: PyTorch's default
    for init in inits:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10), nn.Sigmoid())
        init(model[0].weight)
        assert findings(model, torch.randn(32, 64)) == []


def test_near_misses_hardtanh_at_unit_std_relu6_and_self_gates():
    # hardtanh at input std 1 (LeCun): 32% saturated, under the 50% threshold
    model, x = tanh_net(1 / 8, act=nn.Hardtanh)
    assert findings(model, x) == []
    # 45% and 55% saturated tanh: input std 2.4 and 3.0 around the threshold's 2.7
    for std, expected in ((2.4, 0), (3.0, 1)):
        model, x = tanh_net(std / 8, bias=False)
        assert len(findings(model, x)) == expected, std
    # ReLU6 at input std 4: 7% above 6; its negative half is ReLU's dead half, not saturation
    model, x = tanh_net(0.5, act=nn.ReLU6)
    assert findings(model, x) == []

    class SelfGated(nn.Module):  # tanh-GELU and SiLU written out: they saturate into the identity, by design
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 64)
            nn.init.normal_(self.fc.weight, std=1.0)  # input std 8

        def forward(self, x):
            h = self.fc(x)
            gelu = 0.5 * h * (1.0 + torch.tanh(0.7978845608 * (h + 0.044715 * torch.pow(h, 3.0))))
            return gelu + h * torch.sigmoid(h)

    assert findings(SelfGated(), torch.randn(8, 64)) == []


def test_activation_shapes_from_closed_form_slopes_equal_autograd_ones():
    """The peak slope and knee IL302 reads from closed-form slopes (tanh's 1 - y^2, sigmoid's y(1 - y), ReLU's
    family) are the ones autograd's slopes give on the same 160,001-point lattice."""
    import importlib
    import math

    from initlint.gains import _SLOPES, activation, with_derivative
    from initlint.ops import ActivationParams

    rule_module = importlib.import_module("initlint.rules.saturated_activation")
    x = torch.linspace(-40.0, 40.0, 160001, dtype=torch.float64)
    for fn in _SLOPES:
        p = ActivationParams(fn)
        _, d = with_derivative(activation(p), x)
        peak = float(d.abs().max())
        low = d.abs() < rule_module.SLOPE * peak
        if fn.name == "RELU6":
            low &= x > 0
        knee = float(x[low].abs().min()) if bool(low.any()) else math.inf
        assert rule_module._shape.__wrapped__(p) == (peak, knee), fn


def _bounded_params():
    from initlint.ops import Activation, ActivationParams

    return [ActivationParams(fn) for fn in (Activation.TANH, Activation.SIGMOID, Activation.SOFTSIGN,
                                            Activation.HARDSIGMOID, Activation.RELU6, Activation.HARDTANH)] + [
        ActivationParams(Activation.HARDTANH, min_val=-2.0, max_val=0.5),
        ActivationParams(Activation.HARDTANH, min_val=0.5, max_val=2.0),
    ]


def _saturated(rule_module, p, x, peak):
    """The rule's own test of saturation at the points ``x``."""
    from initlint.gains import activation_with_derivative
    from initlint.ops import Activation

    _, slope = activation_with_derivative(p, x, bit_exact=True)
    saturated = slope.abs() < rule_module.SLOPE * peak
    return saturated & (x > 0) if p.fn is Activation.RELU6 else saturated


def test_no_unit_inside_the_unsaturated_radius_is_saturated():
    """IL302 skips the slopes where the nodes beyond ``_unsaturated_radius`` weigh under half: no point inside it
    may be saturated by the rule's own test (peak from the lattice, slopes as the rule computes them), and the
    radius is no further out than the lattice's knee."""
    import importlib

    rule_module = importlib.import_module("initlint.rules.saturated_activation")
    for p in _bounded_params():
        r = rule_module._unsaturated_radius(p)
        peak, knee = rule_module._shape.__wrapped__(p)
        assert 0 <= r <= knee, (p, r, knee)
        if r > 0:
            x = torch.linspace(-r, r, 400001, dtype=torch.float64)[1:-1]
            assert not bool(_saturated(rule_module, p, x, peak).any()), p


def test_the_saturated_fraction_never_exceeds_the_weight_beyond_the_radius():
    import importlib

    from initlint.gains import DTYPE, gaussian

    rule_module = importlib.import_module("initlint.rules.saturated_activation")
    gen = torch.Generator().manual_seed(0)
    for p in _bounded_params():
        r = rule_module._unsaturated_radius(p)
        peak, _ = rule_module._shape.__wrapped__(p)
        for mean, log_std in torch.randn(200, 2, generator=gen, dtype=torch.float64).tolist():
            rule_ = gaussian(3 * mean, math.exp(2 * log_std) ** 2)
            fraction = rule_.expect(_saturated(rule_module, p, rule_.nodes, peak).to(DTYPE))
            assert fraction <= rule_.expect((rule_.nodes.abs() >= r).to(DTYPE)) + 1e-12, (p, mean, log_std)


def test_calm_inputs_have_under_half_the_grid_beyond_the_radius():
    """IL302 skips an input whose second moment is under _CALM of the unsaturated radius squared without building
    the grid: the grid's weight beyond the radius must then be under the threshold, as the rule computes it."""
    import importlib
    import math

    import torch

    from initlint.gains import DTYPE, gaussian

    m = importlib.import_module("initlint.rules.saturated_activation")
    gen = torch.Generator().manual_seed(0)
    for radius in (1.0, 1.8, 3.6, 6.0):
        for frac, share in zip(torch.rand(300, generator=gen).tolist(), torch.rand(300, generator=gen).tolist()):
            second = frac * m._CALM * radius * radius * 0.999999
            mean = math.sqrt(second * share) * (1 if frac > 0.5 else -1)
            std = math.sqrt(max(second - mean * mean, 0.0))
            rule_ = gaussian(mean, std * std)
            assert rule_.expect((rule_.nodes.abs() >= radius).to(DTYPE)) < m.WARN_FRACTION - 1e-9
