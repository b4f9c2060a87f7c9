"""IL103 transposed-conv-checkerboard: kernel sizes that are not a multiple of the stride."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity

# The per-phase output variance of one seeded 64->64 layer on 2 x 64 x 32 x 32 unit-normal inputs, against the
# ratio the tap counts predict: the weights' own phase energies differ from the tap counts by about 2%
# (4096 x taps squared normals per phase), the input sample adds under 1%.
PHASE_TOL = 0.08
# Against the ratio computed from the same weights, only the input sample and the borders remain.
WEIGHT_PHASE_TOL = 0.03


def upsampler(kernel, stride=2, padding=1, output_padding=1, dims=2, channels=64, seed=0):
    torch.manual_seed(seed)
    cls = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose1d
    model = nn.Sequential(cls(channels, channels, kernel, stride, padding, output_padding, bias=False), nn.ReLU())
    shape = (2, channels, 32, 32) if dims == 2 else (2, channels, 32)
    return model, torch.randn(*shape)


def findings(model, inputs):
    report = lint(model, inputs, select=["IL103"])
    assert report.targets[0].error is None
    return report.findings


def phase_variances(y, stride=2):
    return [y[..., i::stride, j::stride].var().item() for i in range(stride) for j in range(stride)]


def test_kernel_3_stride_2_has_phase_ratio_4():
    model, x = upsampler(3)
    (f,) = findings(model, x)
    assert f.severity is Severity.WARNING
    assert f.message == ("`0` (kernel 3x3, stride 2x2) sums 4, 2, 2 or 1 taps per input channel depending on the "
                         "output pixel's phase: phase variance ratio 4 (max/min), a checkerboard with period 2x2 "
                         "at init")
    assert f.predicted["phase_taps"] == (4, 2, 2, 1) and f.predicted["phase_variance_ratio"] == 4.0
    with torch.no_grad():
        v = phase_variances(model[0](x)[..., 2:-2, 2:-2])  # away from the borders
    measured = max(v) / min(v)
    assert measured == pytest.approx(4.0, rel=PHASE_TOL)  # measured 3.99 in the claims table
    assert measured == pytest.approx(f.predicted["weight_phase_ratio"], rel=WEIGHT_PHASE_TOL)


def test_the_fix_keeps_the_output_size_and_is_clean():
    model, x = upsampler(3)
    (f,) = findings(model, x)
    assert f.fix.summary == ("Use kernel 4 with padding 1, a multiple of the stride that keeps the output size "
                             "(64x64)")
    fixed = eval(f.fix.code, {"nn": nn})  # the code is one constructor call and a comment
    assert fixed(x).shape == model[0](x).shape == (2, 64, 64, 64)
    assert findings(nn.Sequential(fixed, nn.ReLU()), x) == []


@pytest.mark.parametrize("kernel, dims, ratio, taps", [
    (5, 2, 2.25, (9, 6, 6, 4)),
    (5, 1, 1.5, (3, 2)),
    (3, 1, 2.0, (2, 1)),
])
def test_other_kernels_give_the_tap_count_ratio(kernel, dims, ratio, taps):
    model, x = upsampler(kernel, padding=kernel // 2, dims=dims, channels=8)
    (f,) = findings(model, x)
    assert f.predicted["phase_variance_ratio"] == pytest.approx(ratio)
    assert f.predicted["phase_taps"] == taps
    fixed = eval(f.fix.code, {"nn": nn})
    assert fixed(x).shape == model[0](x).shape


def test_a_kernel_smaller_than_the_stride_leaves_phases_dead():
    model, x = upsampler(1, padding=0)
    (f,) = findings(model, x)
    assert f.severity is Severity.ERROR
    assert f.predicted["dead_phases"] == 3
    assert "3 of its 4 output phases get no tap at all and output only the bias (75% of pixels)" in f.message
    with torch.no_grad():
        y = model[0](x)
    assert y[..., 1::2, :].abs().max().item() == 0.0  # no bias here: the dead phases are exactly zero
    fixed = eval(f.fix.code, {"nn": nn})
    assert fixed(x).shape == y.shape


def test_dilation_counts():
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=2, output_padding=1, dilation=2)
    (f,) = findings(nn.Sequential(layer), torch.randn(1, 8, 8, 8))
    assert f.predicted["phase_taps"] == (9, 0, 0, 0)  # every tap lands on an even offset
    assert f.fix.code.startswith("nn.Sequential(nn.Upsample(scale_factor=2")  # no kernel fixes dilation 2


def test_kernels_that_are_multiples_of_the_stride_are_clean():
    for kernel, padding, output_padding in ((4, 1, 0), (2, 0, 0), (6, 2, 0)):
        model, x = upsampler(kernel, padding=padding, output_padding=output_padding)
        assert findings(model, x) == []


def test_near_misses_stride_1_and_plain_strided_convs():
    torch.manual_seed(0)
    stride1 = nn.Sequential(nn.ConvTranspose2d(8, 8, 3, stride=1, padding=1))
    assert findings(stride1, torch.randn(1, 8, 8, 8)) == []
    downsample = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1))  # not transposed
    assert findings(downsample, torch.randn(1, 8, 8, 8)) == []
