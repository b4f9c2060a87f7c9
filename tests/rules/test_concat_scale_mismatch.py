"""IL203 concat-scale-mismatch: concatenated inputs of very different scale, or an init for one input's width."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity
from initlint.patterns import sig

# The embedding's predicted second moment is that of the rows the example ids pick (8 of 1000, each 32 values
# of std 0.02): the ratio against a forward pass is exact up to float rounding; the features' is the example's.
EXACT = 1e-4
# A weight sample's variance: 4 standard errors of sqrt(2/n) for the 9216 weights of the decoder conv (6%).
SAMPLE_TOL = 4 * math.sqrt(2 / 9216)


class Recommender(nn.Module):
    """An item embedding concatenated with dense features into an MLP."""

    def __init__(self, std=0.02):
        super().__init__()
        self.item = nn.Embedding(1000, 32)
        if std is not None:
            nn.init.normal_(self.item.weight, std=std)
        self.mlp = nn.Sequential(nn.Linear(32 + 16, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, ids, features):
        return self.mlp(torch.cat([self.item(ids), features], dim=-1))


def recommender(std=0.02):
    torch.manual_seed(0)
    return Recommender(std), (torch.randint(0, 1000, (8,)), torch.randn(8, 16))


def findings(model, inputs):
    report = lint(model, inputs, select=["IL203"])
    assert report.targets[0].error is None, report.targets[0].error
    return report.findings


def test_an_embedding_at_std_0_02_is_drowned_by_standardized_features():
    model, (ids, feats) = recommender()
    (f,) = findings(model, (ids, feats))
    p = f.predicted
    with torch.no_grad():
        emb = model.item(ids).square().mean().item()
    assert p["weak_second_moment"] == pytest.approx(emb, rel=EXACT)
    assert p["strong_second_moment"] == pytest.approx(feats.square().mean().item(), rel=EXACT)
    assert p["second_moment_ratio"] == pytest.approx(2500, rel=0.15)  # 1/0.02^2, up to the samples' spread
    assert p["weak_share"] == pytest.approx(32 * emb / (32 * emb + 16 * p["strong_second_moment"]))
    assert f.severity is Severity.WARNING
    assert f.message == (
        f"`cat` concatenates `item` with second moment {sig(p['weak_second_moment'])} and input `features` with "
        f"{sig(p['strong_second_moment'])} into `mlp.0`: x{p['second_moment_ratio']:.0f} apart, so `item` makes up "
        f"{100 * p['weak_share']:.2g}% of its output variance at init"
    )
    assert f.fix.code == f'with torch.no_grad():\n    model.get_parameter("item.weight").mul_({p["std_ratio"]:.3g})'


def test_the_fix_silences_the_rule():
    model, inputs = recommender()
    (f,) = findings(model, inputs)
    exec(f.fix.code, {"torch": torch, "model": model})
    assert findings(model, inputs) == []


def test_near_misses_around_a_ratio_of_10():
    # std 0.35: ratio about 1/0.35^2 = 8.2, not reported; std 0.25: 16, reported
    assert findings(*recommender(0.35)) == []
    (f,) = findings(*recommender(0.25))
    assert 10 <= f.predicted["second_moment_ratio"] <= 25
    assert findings(*recommender(None)) == []  # PyTorch's N(0, 1): the features' scale


class Decoder(nn.Module):
    """A U-Net decoder stage: a skip at BatchNorm-ReLU scale, the deeper map upsampled, concatenated."""

    def __init__(self, c=32, out=16, up_std=None, init=None, norm_after_cat=False, cat_dim=1):
        super().__init__()
        self.skip = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.deep = nn.Sequential(nn.Conv2d(3, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        if up_std is not None:
            nn.init.normal_(self.up.weight, std=up_std)
        self.pre = nn.BatchNorm2d(2 * c) if norm_after_cat else nn.Identity()
        self.conv = nn.Conv2d(2 * c, out, 3, padding=1, bias=False)
        if init == "one_input":  # Kaiming for ReLU, computed from one input's c channels
            nn.init.normal_(self.conv.weight, std=math.sqrt(2 / (c * 9)))
        self.bn = nn.BatchNorm2d(out)
        self.cat_dim = cat_dim

    def forward(self, img):
        merged = torch.cat([self.skip(img), self.up(self.deep(img))], dim=self.cat_dim)
        if self.cat_dim != 1:
            return merged
        return torch.relu(self.bn(self.conv(self.pre(merged))))


def decoder(**kw):
    torch.manual_seed(0)
    return Decoder(**kw), torch.randn(2, 3, 16, 16)


def test_unet_concats_with_default_init_are_clean_and_a_dcgan_init_upsampling_is_not():
    assert findings(*decoder()) == []  # ratio about 6, as in the replica U-Net
    (f,) = findings(*decoder(up_std=0.02))
    assert f.predicted["second_moment_ratio"] > 10
    assert "`up`" in f.message and "makes up" in f.message


def test_a_norm_between_the_concat_and_the_layer_or_a_concat_along_space_is_clean():
    assert findings(*decoder(up_std=0.02, norm_after_cat=True)) == []  # DenseNet's BN-ReLU-conv
    assert findings(*decoder(up_std=0.02, cat_dim=2)) == []  # rows of an image, no layer mixes them


def test_an_init_for_one_inputs_width_doubles_the_forward_gain():
    model, x = decoder(init="one_input")
    (f,) = findings(model, x)
    p = f.predicted
    assert f.module == "conv" and f.severity is Severity.INFO  # a BatchNorm follows the conv
    assert p["fan_in_used"] == 32 * 9 and p["fan_in"] == 64 * 9
    assert p["forward_gain_factor"] == pytest.approx(2.0, rel=SAMPLE_TOL)
    assert p["intended_variance"] == pytest.approx(2 / (64 * 9))
    assert f.message.startswith(
        f"`conv` reads 64 concatenated features from `cat` but its weight variance {p['weight_variance']:.3g} is "
        "what `kaiming` (relu) gives for fan-in 32*9, the width of one input (`skip.2`): its forward gain is x2.0"
    )
    exec(f.fix.code, {"nn": nn, "model": model})
    assert findings(model, x) == []


def test_near_miss_an_init_that_a_fan_out_mode_explains_is_not_reported():
    # 64 -> 32 channels: Kaiming (ReLU) for one input's 32*9 equals Kaiming fan-out (ReLU) for 32*9 outputs,
    # torchvision's mode: the two cannot be told apart
    torch.manual_seed(0)
    model, x = Decoder(out=32, init="one_input"), torch.randn(2, 3, 16, 16)
    assert findings(model, x) == []
