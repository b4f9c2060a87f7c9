"""The shared graph patterns: norms (hand-written ones too), residual adds, normalized outputs, repeated blocks."""

from __future__ import annotations

import torch
from torch import nn

from initlint.capture import capture
from initlint.load import from_instance
from initlint.ops import NormKind, OpKind
from initlint.patterns import (
    branch_prenormalized,
    distribution,
    norm_kind,
    normalized_after,
    python_path,
    repeated_blocks,
    residual,
    sig,
)


def graph_of(model, *inputs):
    return capture(from_instance(model, inputs[0] if len(inputs) == 1 else inputs))


class HandNorms(nn.Module):
    """RMSNorm as T5 and Llama write it, LayerNorm by hand, and a softmax (a quotient that is no norm)."""

    def forward(self, x):
        rms = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        centred = x - x.mean(-1, keepdim=True)
        ln = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-5)
        soft = x.exp() / x.exp().sum(-1, keepdim=True)
        return rms, ln, soft


def test_hand_written_norms_are_recognized_and_a_softmax_is_not():
    g = graph_of(HandNorms(), torch.randn(2, 8))
    products = {op.name: norm_kind(g, op) for op in g.of_kind(OpKind.MUL, OpKind.DIV)}
    out = g.of_kind(OpKind.OUTPUT)[0]
    rms, ln, soft = (g.op(n) for n in out.inputs)
    assert products[rms.name] is NormKind.RMS
    assert products[ln.name] is NormKind.LAYER
    assert products[soft.name] is None


class Blocks(nn.Module):
    def __init__(self, post: bool):
        super().__init__()
        self.post = post
        self.ln = nn.ModuleList(nn.LayerNorm(16) for _ in range(2))
        self.fc = nn.ModuleList(nn.Linear(16, 16) for _ in range(2))

    def forward(self, x):
        for ln, fc in zip(self.ln, self.fc):
            x = ln(x + fc(x)) if self.post else x + fc(ln(x))
        return x


def test_residual_adds_find_their_skip_and_branch_and_pre_ln_is_told_from_post_ln():
    for post in (False, True):
        g = graph_of(Blocks(post), torch.randn(2, 16))
        adds = g.of_kind(OpKind.ADD)
        residuals = [residual(g, a) for a in adds]
        assert all(r is not None for r in residuals)
        assert [r.branch.kind for r in residuals] == [OpKind.LINEAR, OpKind.LINEAR]
        assert [branch_prenormalized(g, r) for r in residuals] == [not post, not post]
        # Pre-LN: each sum also reaches the next add (or the output) un-normalized
        assert [bool(normalized_after(g, a)) for a in adds] == [post, post]


def test_a_sum_of_unrelated_tensors_is_not_a_residual():
    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    g = graph_of(Two(), torch.randn(2, 4), torch.randn(2, 4))
    assert residual(g, g.of_kind(OpKind.ADD)[0]) is None


def test_normalized_after_needs_every_path_to_reach_a_norm():
    body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.ReLU())
    g = graph_of(body, torch.randn(2, 4, 8, 8))
    conv = g.of_kind(OpKind.CONV)[0]
    assert [op.kind for op in normalized_after(g, conv)] == [OpKind.NORM]
    assert normalized_after(g, conv, kinds=(NormKind.LAYER,)) == ()  # BatchNorm is not per-sample

    class Leak(nn.Module):  # the conv's output also reaches the output un-normalized
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y), y.relu()

    g = graph_of(Leak(), torch.randn(2, 4, 8, 8))
    assert normalized_after(g, g.of_kind(OpKind.CONV)[0]) == ()


def test_repeated_blocks_group_siblings_by_structure():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3)]
                                        + [nn.Sequential(nn.Linear(8, 4))])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    groups = repeated_blocks(graph_of(Net(), torch.randn(2, 8)))
    top = [g for g in groups if g.container == "layers"]
    assert len(top) == 1
    assert [b.path for b in top[0].blocks] == ["layers.0", "layers.1", "layers.2"]  # layers.3 differs
    assert top[0].span() == "`layers.0` to `layers.2`"


def test_small_helpers():
    assert sig(0.0022) == "0.0022" and sig(96.0) == "96" and sig(1.4e-4) == "1.40e-04" and sig(4.0) == "4"
    assert python_path("features.4.conv.3") == "features[4].conv[3]"
    torch.manual_seed(0)
    assert distribution(torch.empty(288).uniform_(-1, 1)) == "uniform"
    assert distribution(torch.randn(288)) == "normal"
    assert distribution(torch.randn(8)) is None  # too few to tell
