"""Pairs for the weight rules, IL101 to IL107: each defect written three ways, and its fix."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from . import pair

# -- IL101 off-scale-weights ------------------------------------------------------------------------------------


def _mlp(first_std: float | None):
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    if first_std is not None:
        nn.init.normal_(model[0].weight, std=first_std)
    return model, torch.randn(32, 256)


class FunctionalMLP(nn.Module):
    """Weights as bare parameters, applied with ``F.linear``."""

    def __init__(self, std1: float, d: int = 128):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(d, d) * std1)
        self.w2 = nn.Parameter(torch.randn(d, d) * math.sqrt(2 / d))
        self.w3 = nn.Parameter(torch.randn(4, d) * math.sqrt(1 / d))

    def forward(self, x):
        h = F.relu(F.linear(x, self.w1))
        h = F.relu(F.linear(h, self.w2))
        return F.linear(h, self.w3)


class ConvNet(nn.Module):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)
        for m in (self.conv1, self.conv2, self.conv3):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        with torch.no_grad():
            self.conv2.weight.mul_(scale)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.head(x.mean((2, 3)))


IL101 = [
    # 128x Kaiming's variance in the first layer: the output is 128x too large (IL104: the 10-way head's logits
    # grow with it; IL303: the stretch from the input drifts x128)
    *pair("IL101", "sequential", lambda: _mlp(1.0), lambda: _mlp(None), may={"IL104", "IL303"}),
    # 1/400 of Kaiming's variance, functional: the signal is 400x too small at the output
    *pair("IL101", "functional", lambda: (FunctionalMLP(0.0025 / math.sqrt(2)), torch.randn(32, 128)),
          lambda: (FunctionalMLP(math.sqrt(2 / 128)), torch.randn(32, 128)), may={"IL303"}),
    # a hidden conv 10x too large in std (100x in variance), explicit forward
    *pair("IL101", "conv-explicit", lambda: (ConvNet(10.0), torch.randn(4, 3, 16, 16)),
          lambda: (ConvNet(), torch.randn(4, 3, 16, 16)), may={"IL303", "IL104"}),
]

# -- IL102 depthwise-fan ----------------------------------------------------------------------------------------


def _separable(mode: str):
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.ReLU(), nn.Conv2d(64, 64, 1))
    nn.init.kaiming_normal_(model[0].weight, mode=mode, nonlinearity="relu")
    nn.init.kaiming_normal_(model[2].weight, nonlinearity="linear")
    return model, torch.randn(2, 64, 16, 16)


class FunctionalDepthwise(nn.Module):
    """Depthwise 1-D conv with ``F.conv1d(groups=C)`` on bare parameters (a ConvNeXt-style token mixer)."""

    def __init__(self, init: str, c: int = 96, k: int = 7):
        super().__init__()
        self.dw = nn.Parameter(torch.empty(c, 1, k))
        self.pw = nn.Parameter(torch.empty(c, c, 1))
        if init == "xavier":
            nn.init.xavier_normal_(self.dw)  # torch's fan-out c * k: (c + 1) / 2 = 48x too small
        else:
            nn.init.kaiming_normal_(self.dw, mode="fan_in", nonlinearity="linear")
        nn.init.kaiming_normal_(self.pw, nonlinearity="linear")
        self.c = c

    def forward(self, x):
        x = F.conv1d(x, self.dw, padding=3, groups=self.c)
        return F.conv1d(F.gelu(x), self.pw)


class ResNeXtBlock(nn.Module):
    """A grouped 3x3 conv (32 groups of 4 channels) between pointwise convs, no normalization."""

    def __init__(self, mode: str, c: int = 128, groups: int = 32):
        super().__init__()
        self.reduce = nn.Conv2d(c, c, 1)
        self.grouped = nn.Conv2d(c, c, 3, padding=1, groups=groups)
        self.expand = nn.Conv2d(c, 16, 1)
        for m in (self.reduce, self.grouped, self.expand):
            nn.init.kaiming_normal_(m.weight, mode=mode if m is self.grouped else "fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x):
        x = torch.relu(self.reduce(x))
        x = torch.relu(self.grouped(x))
        return self.expand(x)


IL102 = [
    # torch's fan-out for a 64-channel depthwise conv: 64x too small (the signal shrinks x64: IL303)
    *pair("IL102", "sequential", lambda: _separable("fan_out"), lambda: _separable("fan_in"), may={"IL303", "IL101"}),
    *pair("IL102", "functional-1d", lambda: (FunctionalDepthwise("xavier"), torch.randn(2, 96, 32)),
          lambda: (FunctionalDepthwise("kaiming"), torch.randn(2, 96, 32)), may={"IL303", "IL101"}),
    *pair("IL102", "grouped-explicit", lambda: (ResNeXtBlock("fan_out"), torch.randn(2, 128, 8, 8)),
          lambda: (ResNeXtBlock("fan_in"), torch.randn(2, 128, 8, 8)), may={"IL303", "IL101"}),
]

# -- IL103 transposed-conv-checkerboard --------------------------------------------------------------------------


def _upsampler(k: int, op: int):
    model = nn.Sequential(nn.ConvTranspose2d(32, 16, kernel_size=k, stride=2, padding=1, output_padding=op), nn.ReLU(),
                          nn.Conv2d(16, 3, 3, padding=1))
    nn.init.kaiming_normal_(model[2].weight, nonlinearity="linear")
    return model, torch.randn(2, 32, 8, 8)


class FunctionalUp(nn.Module):
    """``F.conv_transpose2d`` on a bare parameter, explicit forward."""

    def __init__(self, k: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 8, k, k) * math.sqrt(2 / (16 * k * k / 4)))
        self.out = nn.Conv2d(8, 3, 1)
        self.pad = (k - 2) // 2 if k % 2 == 0 else 1

    def forward(self, x):
        out_pad = 1 if self.w.shape[-1] % 2 else 0
        x = F.conv_transpose2d(x, self.w, stride=2, padding=self.pad, output_padding=out_pad)
        return self.out(F.relu(x))


class Vocoder(nn.Module):
    """1-D upsampling for audio: kernel 5, stride 2 gives phases of 3 and 2 taps (ratio 1.5)."""

    def __init__(self, k: int):
        super().__init__()
        self.up = nn.ConvTranspose1d(32, 16, k, stride=2, padding=(k - 1) // 2, output_padding=1 if k % 2 else 0)
        self.post = nn.Conv1d(16, 1, 7, padding=3)
        nn.init.kaiming_normal_(self.up.weight, nonlinearity="leaky_relu", a=0.1)

    def forward(self, x):
        return self.post(F.leaky_relu(self.up(x), 0.1))


IL103 = [
    *pair("IL103", "sequential", lambda: _upsampler(3, 1), lambda: _upsampler(4, 0)),
    *pair("IL103", "functional", lambda: (FunctionalUp(3), torch.randn(2, 16, 8, 8)),
          lambda: (FunctionalUp(4), torch.randn(2, 16, 8, 8)), fast=False),  # torch.export: a second
    *pair("IL103", "conv1d", lambda: (Vocoder(5), torch.randn(2, 32, 50)), lambda: (Vocoder(4), torch.randn(2, 32, 50))),
]

# -- IL104 hot-classifier-head ----------------------------------------------------------------------------------


def _classifier(head_std: float):
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 100))
    nn.init.kaiming_normal_(model[0].weight, nonlinearity="relu")
    nn.init.normal_(model[2].weight, std=head_std)
    for m in model:
        nn.init.zeros_(m.bias) if isinstance(m, nn.Linear) else None
    return model, torch.randn(64, 128)


class TiedLM(nn.Module):
    """A language model whose output layer is the input embedding, ``F.linear(h, emb.weight)``."""

    def __init__(self, std: float | None, vocab: int = 256, d: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        if std is not None:
            nn.init.normal_(self.emb.weight, std=std)
        self.mix = nn.Linear(d, d)
        nn.init.kaiming_normal_(self.mix.weight, nonlinearity="linear")
        nn.init.zeros_(self.mix.bias)
        self.ln = nn.LayerNorm(d)

    def forward(self, ids):
        h = self.ln(self.mix(self.emb(ids)))
        return F.linear(h, self.emb.weight)


class ConvClassifier(nn.Module):
    """Log-probabilities from the forward: ``F.log_softmax`` over a conv net's logits."""

    def __init__(self, head_std: float):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.fc = nn.Linear(64, 10)
        nn.init.normal_(self.fc.weight, std=head_std)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        x = self.features(x).mean((2, 3))
        return F.log_softmax(self.fc(x), dim=-1)


IL104 = [
    # logit std 5.2 over 100 classes
    *pair("IL104", "sequential", lambda: _classifier(0.2), lambda: _classifier(0.02)),
    # a tied embedding left at nn.Embedding's N(0, 1): logit std sqrt(64) = 8
    *pair("IL104", "tied-embedding", lambda: (TiedLM(None), torch.randint(0, 256, (4, 16))),
          lambda: (TiedLM(0.02), torch.randint(0, 256, (4, 16)))),
    # a head at std 1 after BatchNorm-ReLU features (std 0.58 each, 64 of them): logit std 4.6
    *pair("IL104", "log-softmax", lambda: (ConvClassifier(1.0), torch.randn(4, 3, 16, 16)),
          lambda: (ConvClassifier(0.01), torch.randn(4, 3, 16, 16))),
]

# -- IL105 recurrent-radius -------------------------------------------------------------------------------------


def _rnn(fix: bool):
    model = nn.RNN(16, 64, batch_first=True)
    if fix:
        nn.init.orthogonal_(model.weight_hh_l0)
    return model, torch.randn(2, 20, 16)


class LoopRNN(nn.Module):
    """A tanh recurrence written by hand: ``h = tanh(W_ih x_t + W_hh h)`` for a fixed number of steps."""

    def __init__(self, fix: bool, hidden: int = 48, steps: int = 16):
        super().__init__()
        self.ih, self.hh = nn.Linear(8, hidden), nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 4)
        if fix:
            nn.init.orthogonal_(self.hh.weight)
        self.hidden, self.steps = hidden, steps

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        for t in range(self.steps):
            h = torch.tanh(self.ih(x[:, t]) + self.hh(h))
        return self.head(h)


class ReluTagger(nn.Module):
    """An IRNN-style ReLU RNN over embeddings; the broken one draws ``W_hh`` at radius about 1.5."""

    def __init__(self, fix: bool, d: int = 32, hidden: int = 64):
        super().__init__()
        self.emb = nn.Embedding(50, d)
        self.rnn = nn.RNN(d, hidden, nonlinearity="relu", batch_first=True)
        if fix:
            nn.init.eye_(self.rnn.weight_hh_l0)
        else:
            nn.init.normal_(self.rnn.weight_hh_l0, std=1.5 / math.sqrt(hidden))
        nn.init.normal_(self.rnn.weight_ih_l0, std=math.sqrt(1 / d))
        nn.init.zeros_(self.rnn.bias_hh_l0)
        nn.init.zeros_(self.rnn.bias_ih_l0)
        self.out = nn.Linear(hidden, 5)
        nn.init.normal_(self.out.weight, std=0.01)

    def forward(self, ids):
        h, _ = self.rnn(self.emb(ids))
        return self.out(h)


IL105 = [
    *pair("IL105", "nn-rnn", lambda: _rnn(False), lambda: _rnn(True)),
    *pair("IL105", "hand-loop", lambda: (LoopRNN(False), torch.randn(2, 16, 8)),
          lambda: (LoopRNN(True), torch.randn(2, 16, 8)), fast=False),
    # an exploding ReLU recurrence grows the forward state too (IL303, IL301 may see it)
    *pair("IL105", "relu-embedding", lambda: (ReluTagger(False), torch.randint(0, 50, (2, 24))),
          lambda: (ReluTagger(True), torch.randint(0, 50, (2, 24))), may={"IL303", "IL301", "IL104"}),
]

# -- IL106 symmetric-init ---------------------------------------------------------------------------------------


def _tanh_mlp(const: bool):
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    for m in model:
        if isinstance(m, nn.Linear):
            if const:
                nn.init.constant_(m.weight, 0.1)
            else:
                nn.init.xavier_normal_(m.weight, gain=nn.init.calculate_gain("tanh"))
            nn.init.zeros_(m.bias)
    return model, torch.randn(8, 16)


class ZeroHiddenConv(nn.Module):
    """A hidden conv zero-initialized "to start small", explicit forward."""

    def __init__(self, zero: bool):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.hidden = nn.Conv2d(16, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 4, 1)
        for m in (self.stem, self.hidden, self.out):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if zero:
            nn.init.zeros_(self.hidden.weight)

    def forward(self, x):
        return self.out(F.relu(self.hidden(F.relu(self.stem(x)))))


class ConstantFunctional(nn.Module):
    """``torch.full`` weights on bare parameters, ``F.linear``."""

    def __init__(self, const: bool, d: int = 32):
        super().__init__()
        w1 = torch.full((d, d), 1 / d) if const else torch.randn(d, d) * math.sqrt(2 / d)
        self.w1, self.b1 = nn.Parameter(w1), nn.Parameter(torch.zeros(d))
        self.w2 = nn.Parameter(torch.randn(d, d) * math.sqrt(2 / d))
        self.w3 = nn.Parameter(torch.randn(3, d) * math.sqrt(1 / d))

    def forward(self, x):
        h = F.relu(F.linear(x, self.w1, self.b1))
        return F.linear(F.relu(F.linear(h, self.w2)), self.w3)


IL106 = [
    *pair("IL106", "sequential", lambda: _tanh_mlp(True), lambda: _tanh_mlp(False), may={"IL302", "IL303"}),
    # a zero hidden conv outputs only its bias: everything after it is constant (IL303 may see a collapse)
    *pair("IL106", "zero-conv", lambda: (ZeroHiddenConv(True), torch.randn(2, 3, 16, 16)),
          lambda: (ZeroHiddenConv(False), torch.randn(2, 3, 16, 16)), may={"IL303", "IL101"}),
    *pair("IL106", "functional", lambda: (ConstantFunctional(True), torch.randn(8, 32)),
          lambda: (ConstantFunctional(False), torch.randn(8, 32)), may={"IL303", "IL101"}),
]

# -- IL107 cloned-layer-init ------------------------------------------------------------------------------------


def _encoder(fix: bool):
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
    model = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(32), enable_nested_tensor=False)
    if fix:
        for block in model.layers:
            for m in block.modules():
                if isinstance(m, nn.MultiheadAttention):
                    m._reset_parameters()
                elif m is not block and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    return model, torch.randn(2, 8, 32)


class MLPBlock(nn.Module):
    def __init__(self, d: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        nn.init.normal_(self.fc2.weight, std=0.02)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class DeepCopied(nn.Module):
    """``nn.ModuleList(copy.deepcopy(block) for ...)``: the usual hand-written clone."""

    def __init__(self, fix: bool, depth: int = 4):
        super().__init__()
        block = MLPBlock()
        self.blocks = nn.ModuleList(MLPBlock() if fix else copy.deepcopy(block) for _ in range(depth))
        self.norm = nn.LayerNorm(64)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.norm(x)


class ConvBlock(nn.Module):
    """A residual conv block, ``x + relu(bn(conv(x)))``: the copies add into one stream. (Copies of a plain
    conv-BN-ReLU stack add into nothing and are IL107's `info`; tests/rules/test_cloned_layer_init.py.)"""

    def __init__(self, c: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return x + F.relu(self.bn(self.conv(x)))


class StateCopied(nn.Module):
    """Blocks made separately, then each loaded with the first one's ``state_dict``."""

    def __init__(self, fix: bool, depth: int = 4):
        super().__init__()
        self.body = nn.Sequential(*[ConvBlock() for _ in range(depth)])
        if not fix:
            for b in self.body[1:]:
                b.load_state_dict(self.body[0].state_dict())
        self.stem = nn.Conv2d(3, 16, 3, padding=1)

    def forward(self, x):
        return self.body(self.stem(x))


IL107 = [
    *pair("IL107", "transformer-encoder", lambda: _encoder(False), lambda: _encoder(True), fast=False),
    *pair("IL107", "deepcopy", lambda: (DeepCopied(False), torch.randn(2, 8, 64)),
          lambda: (DeepCopied(True), torch.randn(2, 8, 64))),
    *pair("IL107", "load-state-dict", lambda: (StateCopied(False), torch.randn(2, 3, 16, 16)),
          lambda: (StateCopied(True), torch.randn(2, 3, 16, 16))),
]

CASES = [*IL101, *IL102, *IL103, *IL104, *IL105, *IL106, *IL107]
