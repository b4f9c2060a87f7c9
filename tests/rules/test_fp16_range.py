"""IL301 fp16-range: predicted magnitudes that overflow or underflow float16, and gradients no loss scale fits."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity
from initlint.patterns import sig

# Fractions measured in float16 over 256 x 512 values against the Gaussian prediction: 51.4% inf measured for
# 51.2% predicted (claim 12: 51%); the sample's own spread is about 0.5 point.
FRACTION_TOL = 0.03
# The gradient spread over 20 layers compounds 20 per-layer predictions, each within about 1%: 1.71e8 measured
# for 2.08e8 predicted. Compared in log space.
SPREAD_LOG_TOL = 0.3
# The output std after five layers 10x the preserving std: 1e5 within the five weight samples' spread (1% each).
STD_TOL = 0.05
# Claim 12's 0.24% zeros at depth 5 in float16, measured on 131,072 values (a standard error of 0.014 point).
ZERO_TOL = 0.002


def stack(times, depth, width=512, seed=0):
    """Claim 12's net: `depth` bias-free linear layers whose std is `times` the variance-preserving one."""
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layer = nn.Linear(width, width, bias=False)
        nn.init.normal_(layer.weight, std=times / math.sqrt(width))
        layers.append(layer)
    return nn.Sequential(*layers), torch.randn(64, width)


def findings(model, inputs):
    report = lint(model, inputs, select=["IL301"])
    assert report.targets[0].error is None, report.targets[0].error
    return report.findings


def half_outputs(model, width=512):
    """Each layer's float16 output on 256 unit-Gaussian rows (float16 matmuls run on the CPU)."""
    x = torch.randn(256, width, generator=torch.Generator().manual_seed(1)).half()
    outs = []
    with torch.no_grad():
        for layer in copy.deepcopy(model).half():
            x = layer(x)
            outs.append(x.float())
    return outs


def test_overflow_at_depth_5_is_an_error():
    model, x = stack(10, 6)
    (f,) = findings(model, x)
    p = f.predicted
    assert f.severity is Severity.ERROR and f.op == "_4"
    assert p["std"] == pytest.approx(1e5, rel=STD_TOL) and p["bf16_holds"] is True and p["later_ops"] == 1
    assert f.message == (
        f"`4` has predicted std {sig(p['std'])} at init, {sig(p['std_over_max'])}x float16's largest value 65504: "
        f"{sig(100 * p['overflow_fraction'])}% of its values overflow to inf (and 1 later ops); bfloat16's range "
        "(3.4e38) holds it"
    )
    depth5 = half_outputs(model)[4]
    assert torch.isinf(depth5).float().mean().item() == pytest.approx(p["overflow_fraction"], abs=FRACTION_TOL)
    assert p["overflow_fraction"] == pytest.approx(0.51, abs=FRACTION_TOL)  # claim 12: 51% inf at depth 5


def test_underflow_shows_first_as_subnormals():
    """Claim 12 at 0.1x: 99.8% subnormal and 0.24% zero at depth 5: a warning, precision lost, not values."""
    model, x = stack(0.1, 5)
    (f,) = findings(model, x)
    p = f.predicted
    assert f.severity is Severity.WARNING and f.op == "_4" and "zero_op" not in p
    assert f.message == (
        f"`4` has predicted std {sig(p['std'])} at init, {sig(p['tiny_over_std'])}x below float16's smallest normal "
        f"value 6.1e-05: {sig(100 * p['subnormal_fraction'])}% of its nonzero values are subnormal in float16, with "
        "fewer significant bits; bfloat16's range (down to 1.2e-38) holds them"
    )
    depth5 = half_outputs(model)[4].abs()
    assert (depth5 < 2**-14).float().mean().item() == pytest.approx(p["subnormal_fraction"], abs=FRACTION_TOL)
    assert (depth5 == 0).float().mean().item() == pytest.approx(0.0024, abs=ZERO_TOL)


def test_zeros_dominate_by_depth_8_an_error():
    model, x = stack(0.1, 8)
    (f,) = findings(model, x)
    p = f.predicted
    assert f.severity is Severity.ERROR and f.op == "_4" and p["zero_op"] == "_7"
    assert f"; from `7` (std {sig(p['zero_std'])}) {sig(100 * p['zero_fraction'])}% round to zero" in f.message
    depth8 = half_outputs(model)[7]
    assert (depth8 == 0).float().mean().item() == pytest.approx(p["zero_fraction"], abs=FRACTION_TOL)


def test_the_fix_rescales_the_layers_on_the_way():
    model, x = stack(10, 6)
    (f,) = findings(model, x)
    assert f.fix.code.count("nn.init.normal_(") == 5  # the five layers up to `4`, each 10x off
    assert f.fix.code.splitlines()[0] == ('nn.init.normal_(model.get_parameter("0.weight"), mean=0.0, std=0.0442)  '
                                          f"# now {sig(model[0].weight.square().mean().sqrt().item())}")
    torch.manual_seed(1)
    exec(f.fix.code, {"nn": nn, "model": model, "torch": torch})
    assert [g.op for g in findings(model, x)] == []  # the sixth layer is 10x: std 10 at the output, far from range


def test_gradients_that_no_loss_scale_fits():
    """A 20-layer default-init MLP: the forward stays near the biases' 1e-3, the gradient energy falls 1/6 per
    layer, and at the loss scale that keeps the top gradients finite the first layer's are subnormal."""
    torch.manual_seed(0)
    layers = []
    for _ in range(20):
        layers += [nn.Linear(128, 128), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(128, 10))
    (f,) = findings(model, torch.randn(32, 128))
    p = f.predicted
    assert f.severity is Severity.WARNING and f.op == "_0"
    assert p["loss_scale"] == pytest.approx(65504 / (4.89 * p["largest_std"]))
    assert f.message.startswith(f"gradients at init span {sig(p['spread'])}x in std, from `40` ({sig(p['largest_std'])}) "
                                f"to `0` ({sig(p['smallest_std'])}): at the loss scale that keeps the largest finite "
                                f"in float16, {sig(100 * p['subnormal_fraction'])}% of `0`'s gradient values are subnormal")
    x = torch.randn(2048, 128, generator=torch.Generator().manual_seed(1))
    outs, h = [], x
    for m in model:
        h = m(h)
        h.retain_grad()
        outs.append(h)
    (h * torch.randn(h.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    stds = [o.grad.square().mean().sqrt().item() for o in outs]
    assert abs(math.log(max(stds) / min(stds) / p["spread"])) < SPREAD_LOG_TOL


def test_near_misses_and_what_autocast_keeps_in_float32():
    assert findings(*stack(10, 4)) == []  # std 1e4: 6.5 stds from 65504, one value in 1e10
    assert findings(*stack(0.1, 4)) == []  # std 1e-4: 46% subnormal (measured 45.7%), under half
    assert findings(*stack(1, 8)) == []
    torch.manual_seed(0)
    layers = []
    for _ in range(16):
        layers += [nn.Linear(128, 128), nn.ReLU()]
    assert findings(nn.Sequential(*layers, nn.Linear(128, 10)), torch.randn(32, 128)) == []  # spread 4e6

    class Masked(nn.Module):  # a LayerScale of 1e-6 (a float32 parameter under autocast) and an additive mask
        def __init__(self):
            super().__init__()
            self.fc, self.gamma = nn.Linear(64, 64), nn.Parameter(torch.full((64,), 1e-6))
            self.register_buffer("mask", torch.triu(torch.full((16, 16), -1e9), diagonal=1))

        def forward(self, x):
            scores = torch.softmax(x @ x.transpose(-1, -2) / 8 + self.mask, dim=-1)
            return x + self.gamma * self.fc(scores @ x)

    assert findings(Masked(), torch.randn(2, 16, 64)) == []


def test_a_model_on_the_meta_device_has_no_statistics_to_judge():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    report = lint(model, None, select=["IL301"], input_shapes=[[4, 64]])
    assert report.targets[0].error is None and report.findings == []


def test_a_tiny_constant_is_reported_by_its_magnitude_not_divided_by_its_zero_std():
    """A zero-initialized layer whose bias is 1e-6: every output is 1e-6, subnormal in float16, with no spread
    (found by the fuzz as a ZeroDivisionError, from an RMSNorm's eps over a zero input)."""
    layer = nn.Linear(16, 16)
    nn.init.zeros_(layer.weight)
    nn.init.constant_(layer.bias, 1e-6)
    (f,) = [f for f in lint(nn.Sequential(nn.Linear(16, 16), layer), torch.randn(8, 16), select=["IL301"]).findings]
    assert "is a constant of magnitude 1.00e-06 at init, 61x below float16's smallest normal" in f.message
    assert f.predicted["std"] == pytest.approx(1e-6) and f.predicted["subnormal_fraction"] == 1.0


def test_relu_fractions_read_off_the_sorted_nodes_agree_with_the_reductions():
    """IL301 reads a ReLU's or ReLU6's fractions out of float16's range off the grid's sorted nodes, as runs of
    them; they must be the masked sums over ``f(nodes)`` to rounding, zeros exactly where those are (inf and NaN
    are left to the reductions)."""
    import importlib
    import math

    import torch

    from initlint.gains import DTYPE, activation, gaussian
    from initlint.ops import Activation, ActivationParams

    m = importlib.import_module("initlint.rules.fp16_range")
    gen = torch.Generator().manual_seed(0)
    cases = [(0.0, 1.0), (0.0, 0.0), (-1.0, 0.0), (3.0, 0.0), (-5.0, 1e-6), (1e-5, 1e-12), (7.0, 1.0), (0.0, 1e-10),
             (1e5, 1.0), (-1e5, 1e12), (2.0**-15, 0.0), (math.inf, 1.0), (math.nan, 1.0), (0.0, math.inf),
             (0.0, 1e-9), (1e-6, 1e-10), (0.0, 1e10), (4e4, 1e9), (1e-30, 1e-60), (0.0, 1e-300), (1e38, 1e76)]
    cases += [(float(a) * 10.0 ** float(b), 10.0 ** float(c)) for a, b, c in
              zip(torch.randn(300, generator=gen), torch.randint(-6, 6, (300,), generator=gen),
                  torch.randint(-14, 12, (300,), generator=gen))]
    for fn in (Activation.RELU, Activation.RELU6):
        for mean, variance in cases:
            rule_ = gaussian(mean, variance)
            y = activation(ActivationParams(fn))(rule_.nodes).abs()
            masks = torch.stack([y > m.FP16_MAX, y < m.FP16_TINY, y < m.FP16_ZERO, y < m.BF16_TINY,
                                 y > m.BF16_MAX]) & (y > 0)
            expected = (masks.to(DTYPE) * rule_.weights).sum(-1).tolist()
            fast = m._clipped_fractions(fn, mean, variance)
            if math.isfinite(mean) and math.isfinite(variance):
                assert fast is not None, (fn, mean, variance)
                for a, b in zip(fast, expected):
                    assert (a == 0.0) == (b == 0.0) and math.isclose(a, b, rel_tol=1e-12), (fn, mean, variance)
            else:  # left to the reductions
                assert fast is None, (fn, mean, variance)


def test_plainly_in_range_bounds_hold():
    """The tensors IL301 skips without erfc (second moment under OVERFLOW FP16_MAX^2 / 2, std over
    FP16_TINY / (_PEAK_SPREAD MOST)) are those whose overflow fraction is under OVERFLOW and subnormal fraction
    under MOST, as computed."""
    import importlib
    import math

    m = importlib.import_module("initlint.rules.fp16_range")
    second = 0.5 * m.OVERFLOW * m.FP16_MAX**2
    for std in (m.FP16_TINY / (m._PEAK_SPREAD * m.MOST) * 1.0001, 1e-3, 1.0, 40.0, math.sqrt(second) * 0.9999):
        for frac in (0.0, 0.3, 0.7, 0.999):
            mean = math.sqrt(max(second - std * std, 0.0)) * frac
            if mean * mean + std * std >= second:
                continue
            assert m._beyond(mean, std, m.FP16_MAX) < m.OVERFLOW, (mean, std)
            assert m._within(mean, std, m.FP16_TINY) < m.MOST, (mean, std)
