"""Layer probes: IL102 (forward gain with and without the norm after it), IL103 (variance per output phase on
random input), IL106 (rank of the layer's output)."""

from __future__ import annotations

import torch
from torch import nn

from .stage import NOT_REPRODUCED, confirmed_and_fixed, forced, one, probed

# A forward gain measured over 4 x 64 x 16 x 16 outputs is within 10% of the engine's; phase ratios of a
# kernel that is a multiple of the stride stay under IL103's probe's 1.25 with 16 output channels (measured
# 1.12 here: the weights' own energy per phase differs by chance); the tap-count ratio 4 for k = 3, s = 2
# within 15% (claim 4: 3.99 on wide layers; the weights' spread adds the rest).
GAIN_TOLERANCE = 0.10
PHASE_TOLERANCE = 0.15


def depthwise(mode="fan_out", norm=False):
    torch.manual_seed(0)
    layers = [nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)]
    layers += [nn.BatchNorm2d(64)] if norm else []
    model = nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(64, 64, 1))
    nn.init.kaiming_normal_(model[0].weight, mode=mode, nonlinearity="relu")
    return model


def test_depthwise_fan_confirmed_and_fixed():
    f = one(depthwise(), torch.randn(4, 64, 16, 16), "IL102")
    confirmed_and_fixed(f)
    m = f.probe.measured
    assert abs(m["forward_gain"] / f.predicted["forward_gain"] - 1) < GAIN_TOLERANCE, m
    assert abs(f.probe.after_fix["forward_gain"] / f.predicted["intended_forward_gain"] - 1) < GAIN_TOLERANCE


def test_depthwise_fan_with_a_norm_after_measures_both():
    f = one(depthwise(norm=True), torch.randn(4, 64, 16, 16), "IL102")
    confirmed_and_fixed(f)
    # the conv's output is 64x too small; the BatchNorm after it brings the second moment back to about 1
    assert f.probe.measured["forward_gain"] < 0.1
    assert abs(f.probe.measured["normalized_second_moment"] - 1.0) < GAIN_TOLERANCE


def test_depthwise_fan_forced_on_fan_in_init_not_reproduced():
    f = forced(depthwise(mode="fan_in"), torch.randn(4, 64, 16, 16), "IL102", "_0",
               {"intended_forward_gain": 2.0, "intended_variance": 2 / 9})
    assert f.probe.status is NOT_REPRODUCED, dict(f.probe.measured)


def upsampler(kernel=3, output_padding=1):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.ConvTranspose2d(32, 16, kernel_size=kernel, stride=2, padding=1, output_padding=output_padding),
        nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))


def test_checkerboard_confirmed_and_fixed():
    model = upsampler()
    f = one(model, torch.randn(2, 32, 8, 8), "IL103")
    confirmed_and_fixed(f)
    assert abs(f.probe.measured["phase_variance_ratio"] / f.predicted["phase_variance_ratio"] - 1) < PHASE_TOLERANCE
    assert f.probe.after_fix["phase_variance_ratio"] < 1.25
    assert model[0].kernel_size == (3, 3), "the user's layer is left as it was"


def test_checkerboard_fix_keeps_the_output_size():
    import initlint

    model = upsampler()
    x = torch.randn(2, 32, 8, 8)
    report = initlint.lint(model, x, select=["IL103"], probe=True, device="cpu")
    fixed = initlint.fix(model, report)
    assert fixed[0].kernel_size == (4, 4) and fixed(x).shape == model(x).shape


class FunctionalUNetUp(nn.Module):
    """``F.conv_transpose2d`` on a bare parameter, padding and output padding by position, its output concatenated
    with a skip of the upsampled size: a fix that changed the output size would break the concat."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(32, 16, 3, 3) * (2 / (32 * 9 / 4)) ** 0.5)
        self.skip = nn.Conv2d(32, 16, 1)
        self.out = nn.Conv2d(32, 3, 3, padding=1)

    def forward(self, x):
        up = torch.nn.functional.conv_transpose2d(x, self.w, None, 2, 1, 1)
        skip = self.skip(torch.nn.functional.interpolate(x, scale_factor=2.0))
        return self.out(torch.relu(torch.cat([up, skip], dim=1)))


def test_checkerboard_of_a_functional_call_confirmed_and_fixed():
    import initlint

    model, x = FunctionalUNetUp(), torch.randn(2, 32, 8, 8)
    f = one(model, x, "IL103")
    confirmed_and_fixed(f)
    assert f.probe.measured["phase_variance_ratio"] > 1.5 and f.probe.after_fix["phase_variance_ratio"] < 1.25
    assert model.w.shape == (32, 16, 3, 3), "the user's weight is left as it was"
    # the machine form: a 4x4 weight, and the call's output padding (passed by position) 0 in the traced forward
    report = initlint.lint(model, x, select=["IL103"], probe=True, device="cpu")
    fixed = initlint.fix(model, report, x)
    assert fixed.w.shape == (32, 16, 4, 4) and fixed(x).shape == model(x).shape
    calls = [n for n in fixed.graph.nodes if n.target is torch.nn.functional.conv_transpose2d]
    assert len(calls) == 1 and calls[0].args[4:6] == (1, [0, 0]), calls[0].args


def test_checkerboard_forced_on_kernel_4_not_reproduced():
    f = forced(upsampler(kernel=4, output_padding=0), torch.randn(2, 32, 8, 8), "IL103", "_0",
               {"phase_variance_ratio": 4.0})
    assert f.probe.status is NOT_REPRODUCED, dict(f.probe.measured)


def constant_mlp():
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.weight, 0.1)
            nn.init.zeros_(m.bias)
    return model


def test_symmetric_init_confirmed_and_fixed():
    found = probed(constant_mlp(), torch.randn(8, 16), "IL106")
    assert [f.op for f in found] == ["_0", "_2"]
    for f in found:
        confirmed_and_fixed(f)
        assert f.probe.measured["rank"] == 1.0  # every unit computes the same value
        assert f.probe.after_fix["rank"] == f.probe.after_fix["full_rank"]


def test_symmetric_init_forced_on_random_layer_not_reproduced():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1))
    f = forced(model, torch.randn(8, 16), "IL106", "_0", {"units": 64, "tied_units": 64})
    assert f.probe.status is NOT_REPRODUCED and f.probe.measured["rank"] == 16.0  # the fan-in bounds it
