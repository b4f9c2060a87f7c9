"""IL204 post-ln: residual adds around attention that feed straight into a LayerNorm or RMSNorm."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity


def encoder(layers, norm_first=False, d=32):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=norm_first)
    norm = nn.LayerNorm(d) if norm_first else None
    return nn.TransformerEncoder(layer, layers, norm=norm, enable_nested_tensor=False), torch.randn(2, 8, d)


def findings(model, inputs):
    report = lint(model, inputs, select=["IL204"])
    assert report.targets[0].error is None
    return report.findings


def test_a_six_layer_post_ln_encoder_is_a_warning_with_deepnorm_constants_for_its_depth():
    (f,) = findings(*encoder(6))
    assert f.severity is Severity.WARNING
    assert f.module == "layers.0.norm1"
    assert f.message == (
        "6 Post-LN layers (`layers.0` to `layers.5`): 12 residual adds each feed only a `LayerNorm`, so the last "
        "layer's gradient at init does not shrink with depth; Pre-LN's would be 1/sqrt(6) = 0.41 of it with "
        "branches as strong as their input"
    )
    assert f.predicted["pre_ln_last_layer_gradient_factor"] == pytest.approx(1 / math.sqrt(6))
    assert f.predicted["deepnorm_alpha"] == pytest.approx(12 ** 0.25)  # (2N)^(1/4), Wang et al. 2022
    assert f.predicted["deepnorm_beta"] == pytest.approx(48 ** -0.25)  # (8N)^(-1/4)
    assert "alpha 1.86, beta 0.38" in f.fix.summary
    assert "x = norm(1.86 * x + sublayer(x))" in f.fix.code and "gain=0.38" in f.fix.code


def test_a_shallow_post_ln_stack_is_info():
    (f,) = findings(*encoder(2))
    assert f.severity is Severity.INFO
    assert f.predicted["layers"] == 2 and f.predicted["post_ln_adds"] == 4


def test_pre_ln_with_a_final_norm_is_clean():
    assert findings(*encoder(2, norm_first=True)) == []


def rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


class HandWritten(nn.Module):
    """Single-head attention and an MLP, with RMSNorm written by hand as T5 and Llama do."""

    def __init__(self, post: bool, attention: bool = True, d=16, layers=2):
        super().__init__()
        self.post, self.attention = post, attention
        self.qkv = nn.ModuleList(nn.Linear(d, 3 * d) for _ in range(layers))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
                                 for _ in range(layers))
        self.w1 = nn.ParameterList(nn.Parameter(torch.ones(d)) for _ in range(layers))
        self.w2 = nn.ParameterList(nn.Parameter(torch.ones(d)) for _ in range(layers))

    def attend(self, i, x):
        q, k, v = self.qkv[i](x).chunk(3, dim=-1)
        return torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v

    def forward(self, x):
        for i in range(len(self.mlp)):
            if self.attention:
                x = rms(x + self.attend(i, x), self.w1[i]) if self.post else x + self.attend(i, rms(x, self.w1[i]))
            x = rms(x + self.mlp[i](x), self.w2[i]) if self.post else x + self.mlp[i](rms(x, self.w2[i]))
        return x


def test_hand_written_rms_norm_post_ln_is_found():
    (f,) = findings(HandWritten(post=True), torch.randn(2, 5, 16))
    assert f.message.startswith("2 Post-LN layers (the model): 4 residual adds each feed only an `RMSNorm`")


def test_near_misses_pre_ln_by_hand_and_post_norm_without_attention():
    assert findings(HandWritten(post=False), torch.randn(2, 5, 16)) == []
    # norm(x + mlp(x)) with no attention anywhere: a post-norm MLP, not a Post-LN transformer
    assert findings(HandWritten(post=True, attention=False), torch.randn(2, 5, 16)) == []


def test_one_post_ln_layer_applied_repeatedly_counts_each_application():
    class Shared(nn.Module):  # ALBERT-style: one layer, its weights shared across depth
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)

        def forward(self, x):
            for _ in range(3):
                x = self.layer(x)
            return x

    torch.manual_seed(0)
    (f,) = findings(Shared(), torch.randn(2, 8, 32))
    assert f.message.startswith("3 Post-LN layers (`layer`, applied 3 times): 6 residual adds")
