"""IL102 depthwise-fan: grouped convs initialized with PyTorch's groups-blind fan-out."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity
from initlint.patterns import sig

# A normal sample of n weights has a variance within 4 standard errors (sqrt(2/n) relative) of the target.
SAMPLE_SIGMAS = 4
# A conv's output second moment over 2 x 64 x 16 x 16 outputs of unit-normal input: within 5% of the prediction
# (the spread is that of the input sample's energy per output, about 2%).
FORWARD_TOL = 0.05
# Zero padding: on a 16-wide map a 3-tap kernel with padding 1 sums 3 taps at 14 positions and 2 at the 2
# borders, so the mean output second moment is (14*3 + 2*2) / (16*3) per dimension of fan_in * Var(w).
BORDER = ((14 * 3 + 2 * 2) / (16 * 3)) ** 2


def depthwise(channels=64, init="kaiming_fan_out", norm=False, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
    if init == "kaiming_fan_out":
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    elif init == "kaiming_fan_in":
        nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    elif init == "xavier":
        nn.init.xavier_normal_(conv.weight)
    layers = [conv] + ([nn.BatchNorm2d(channels)] if norm else []) + [nn.ReLU(), nn.Conv2d(channels, 8, 1)]
    return nn.Sequential(*layers), torch.randn(2, channels, 16, 16)


def findings(model, inputs):
    report = lint(model, inputs, select=["IL102"])
    assert report.targets[0].error is None
    return report.findings


def test_kaiming_fan_out_on_a_depthwise_conv_is_c_times_too_small():
    model, x = depthwise(64)
    (f,) = findings(model, x)
    w = model[0].weight.detach()
    variance = w.var(correction=0).item()
    assert abs(variance / (2 / 576) - 1) < SAMPLE_SIGMAS * math.sqrt(2 / w.numel())
    assert f.severity is Severity.WARNING  # a ReLU follows, no norm
    assert f.message == (
        f"`0` (groups=64) has weight variance {sig(variance)}, as `kaiming_normal_(mode=\"fan_out\")` gives "
        "with PyTorch's fan-out 576 (= 64*9), which counts all 64 groups' outputs where one group's fan-out is 9: "
        "64x smaller than that init intends (32.5x for `xavier_normal_()`, which gives the same variance here)"
    )  # 2/576 and 2/585 are 1.5% apart: a sample of 576 weights cannot tell them apart
    assert f.predicted["factor"] == pytest.approx(64.0)
    assert f.predicted["intended_variance"] == pytest.approx(2 / 9)
    assert f.fix.code.startswith('nn.init.normal_(model.get_parameter("0.weight"), mean=0.0, std=0.471)')


def test_the_fix_restores_the_intended_variance_and_silences_the_rule():
    model, x = depthwise(64)
    (f,) = findings(model, x)
    namespace = {"nn": nn, "model": model, "math": math}
    torch.manual_seed(1)
    exec(f.fix.code, namespace)
    assert model[0].weight.var().item() == pytest.approx(2 / 9, rel=SAMPLE_SIGMAS * math.sqrt(2 / 576))
    assert findings(model, x) == []


def test_the_forward_gain_printed_is_what_the_layer_does():
    model, x = depthwise(64)
    (f,) = findings(model, x)
    with torch.no_grad():
        y = model[0](x)
    measured = y.square().mean().item() / x.square().mean().item()
    assert measured == pytest.approx(f.predicted["forward_gain"] * BORDER, rel=FORWARD_TOL)


def test_claim_3_factors_at_256_channels():
    """The measured claim: fans (9, 2304); xavier (C+1)/2 = 128.5x too small, kaiming fan-out C = 256x.

    At this width the two give the same variance (2/2304 against 2/2313), so both are named.
    """
    for init in ("xavier", "kaiming_fan_out"):
        model, x = depthwise(256, init)
        (f,) = findings(model, x[:, :, :8, :8])
        assert f.predicted["factor"] == pytest.approx(256.0)
        assert f.predicted["torch_fan_out"] == 2304 and f.predicted["true_fan_out"] == 9
        assert "as `kaiming_normal_(mode=\"fan_out\")` gives" in f.message
        assert f.message.endswith("(128x for `xavier_normal_()`, which gives the same variance here)")
        # measured 0.0079 (xavier) and 0.0078 (kaiming) for the output/input variance
        assert f.predicted["forward_gain"] == pytest.approx(0.0078, abs=0.0006)


def test_a_batchnorm_after_makes_it_info():
    model, x = depthwise(64, norm=True)
    (f,) = findings(model, x)
    assert f.severity is Severity.INFO


def test_fan_in_and_default_inits_are_clean():
    for init in ("kaiming_fan_in", "default"):
        model, x = depthwise(64, init)
        assert findings(model, x) == []


def test_near_misses_ungrouped_convs_small_factors_and_ambiguous_variances():
    # groups=1 with fan-out mode: PyTorch's fans are right
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
    nn.init.kaiming_normal_(plain[0].weight, mode="fan_out")
    assert findings(plain, torch.randn(2, 16, 8, 8)) == []
    # groups=2 with Xavier: the fan-out is off by 2, the variance only by (9*32 + 9*64)/(9*32 + 9*32) = 1.5
    two = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=2), nn.ReLU())
    nn.init.xavier_normal_(two[0].weight)
    assert findings(two, torch.randn(2, 64, 8, 8)) == []
    # 6 channels: kaiming fan-out (2/54) equals the default init's 1/(3*9); the rule cannot tell, says nothing
    six, x = depthwise(6, "kaiming_fan_out")
    assert findings(six, x) == []


def test_fixed_std_inits_that_happen_to_match_are_not_reported():
    """ConvNeXt's 7x7 depthwise convs with N(0, 0.02): at 96 channels that is kaiming fan-out's std (0.0206),
    at 192 channels Xavier's with a relu gain (0.0206); neither is evidence of a fan mistake."""
    for channels in (48, 96, 192):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(channels, channels, 7, padding=3, groups=channels), nn.LayerNorm([8, 8]))
        nn.init.normal_(model[0].weight, std=0.02)
        assert findings(model, torch.randn(1, channels, 8, 8)) == [], channels


def test_grouped_not_depthwise_conv_is_off_by_the_group_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1, groups=8, bias=False), nn.ReLU())
    nn.init.kaiming_normal_(model[0].weight, mode="fan_out")
    (f,) = findings(model, torch.randn(2, 128, 8, 8))
    assert f.predicted["factor"] == pytest.approx(8.0)
    assert f.predicted["torch_fan_out"] == 1152 and f.predicted["true_fan_out"] == 144
