"""Pairs for the numerical rules: IL301 fp16-range, IL302 saturated-activation, IL303 signal-drift."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from . import pair

# -- IL301 fp16-range --------------------------------------------------------------------------------------------


def _linear_stack(std_factor: float, depth: int = 6, d: int = 256):
    layers = []
    for _ in range(depth):
        layer = nn.Linear(d, d, bias=False)
        nn.init.normal_(layer.weight, std=std_factor / math.sqrt(d))
        layers.append(layer)
    return nn.Sequential(*layers), torch.randn(16, d)


class ConvUnderflow(nn.Module):
    """A bias-free conv stack drawn at 0.1x the variance-preserving std: values shrink 100x per layer."""

    def __init__(self, factor: float, depth: int = 5, c: int = 16):
        super().__init__()
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(c, c, 3, 3) * factor * math.sqrt(2 / (c * 9))) for _ in range(depth))

    def forward(self, x):
        for w in self.weights:
            x = F.relu(F.conv2d(x, w, padding=1))
        return x


class RawAudio(nn.Module):
    """A 1-D conv front end fed int16-range samples (std 16000): values beyond 65504 from the first layer;
    the fix scales the waveform to [-1, 1]."""

    def __init__(self, rescale: bool):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 32, 9, stride=2, padding=4)
        self.conv2 = nn.Conv1d(32, 32, 9, stride=2, padding=4)
        self.head = nn.Linear(32, 8)
        for m in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        self.rescale = rescale

    def forward(self, wav):
        x = wav / 32768.0 if self.rescale else wav
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(x.mean(-1))


def _audio(rescale: bool):
    return RawAudio(rescale), (16000.0 * torch.randn(2, 1, 512)).clamp(-32768, 32767)


IL301 = [
    # 10x the std per layer: x100 per layer in variance, past 65504 by layer 3 (each layer also IL101, the stack
    # IL303, the 256 outputs a regression head read as hot, IL104)
    *pair("IL301", "overflow-sequential", lambda: _linear_stack(10.0), lambda: _linear_stack(1.0),
          may={"IL101", "IL303", "IL104"}),
    *pair("IL301", "underflow-functional", lambda: (ConvUnderflow(0.1), torch.randn(2, 16, 8, 8)),
          lambda: (ConvUnderflow(1.0), torch.randn(2, 16, 8, 8)), may={"IL101", "IL303"}),
    # raw int16 audio: the input itself is in range, the first conv's output is not (the 8 outputs, read as
    # logits, are hot too: IL104)
    *pair("IL301", "raw-input", lambda: _audio(False), lambda: _audio(True), may={"IL303", "IL104"}),
]

# -- IL302 saturated-activation ---------------------------------------------------------------------------------


def _tanh_net(std: float | None):
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10))
    if std is None:
        nn.init.xavier_normal_(model[0].weight, gain=nn.init.calculate_gain("tanh"))
    else:
        nn.init.normal_(model[0].weight, std=std)
    nn.init.normal_(model[2].weight, std=0.02)
    return model, torch.randn(32, 64)


class Gated(nn.Module):
    """A sigmoid gate whose bias was set to 8 "to start open": every gate saturated at 1."""

    def __init__(self, bias: float, d: int = 64):
        super().__init__()
        self.gate, self.value, self.out = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 4)
        for m in (self.gate, self.value):
            nn.init.xavier_normal_(m.weight)
        nn.init.constant_(self.gate.bias, bias)
        nn.init.normal_(self.out.weight, std=0.02)

    def forward(self, x):
        return self.out(torch.sigmoid(self.gate(x)) * self.value(x))


class HardtanhConv(nn.Module):
    """``F.hardtanh`` after convs drawn at 3x Kaiming's std: 80% of units clipped."""

    def __init__(self, factor: float, c: int = 16):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        for m in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
            nn.init.zeros_(m.bias)
            with torch.no_grad():
                m.weight.mul_(factor)
        self.head = nn.Conv2d(c, 2, 1)
        nn.init.normal_(self.head.weight, std=0.05)

    def forward(self, x):
        x = F.hardtanh(self.conv1(x))
        x = F.hardtanh(self.conv2(x))
        return self.head(x)


IL302 = [
    # pre-activation std 4: 65% saturated
    *pair("IL302", "sequential-tanh", lambda: _tanh_net(0.5), lambda: _tanh_net(None), may={"IL101"}),
    *pair("IL302", "sigmoid-gate-bias", lambda: (Gated(8.0), torch.randn(16, 64)),
          lambda: (Gated(0.0), torch.randn(16, 64))),
    # 3x the std of a variance-preserving conv (9x in variance) in front of each hardtanh
    *pair("IL302", "hardtanh-functional", lambda: (HardtanhConv(3.0), torch.randn(2, 3, 16, 16)),
          lambda: (HardtanhConv(1.0), torch.randn(2, 3, 16, 16)), may={"IL101"}),
]

# -- IL303 signal-drift ------------------------------------------------------------------------------------------


def _relu_stack(kaiming: bool, depth: int = 6, d: int = 256):
    layers = []
    for _ in range(depth):
        layer = nn.Linear(d, d)
        if kaiming:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        layers += [layer, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(d, 10)), torch.randn(32, d)


class DefaultConvs(nn.Module):
    """Eight convs at PyTorch's default init (x1/6 per conv-ReLU), ``F.relu`` in an explicit forward."""

    def __init__(self, kaiming: bool, c: int = 16, depth: int = 8):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else c, c, 3, padding=1) for i in range(depth))
        if kaiming:
            for m in self.convs:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.head = nn.Linear(c, 10)
        nn.init.normal_(self.head.weight, std=0.01)

    def forward(self, x):
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.head(x.mean((2, 3)))


class GeluGrowth(nn.Module):
    """Five Linear-GELU layers at 2x Kaiming's std (4x its variance, under IL101's 10x): GELU keeps 0.43 of its
    input's second moment, so x3.4 per layer, x450 over five."""

    def __init__(self, factor: float, d: int = 128, depth: int = 5):
        super().__init__()
        std = factor * math.sqrt(2 / d)
        self.ws = nn.ParameterList(nn.Parameter(torch.randn(d, d) * std) for _ in range(depth))
        self.head = nn.Parameter(torch.randn(4, d) * 0.01)

    def forward(self, x):
        for w in self.ws:
            x = F.gelu(F.linear(x, w))
        return F.linear(x, self.head)


IL303 = [
    *pair("IL303", "sequential-default", lambda: _relu_stack(False), lambda: _relu_stack(True)),
    *pair("IL303", "conv-explicit", lambda: (DefaultConvs(False), torch.randn(2, 3, 16, 16)),
          lambda: (DefaultConvs(True), torch.randn(2, 3, 16, 16))),
    *pair("IL303", "functional-growth", lambda: (GeluGrowth(2.0), torch.randn(16, 128)),
          lambda: (GeluGrowth(1.0), torch.randn(16, 128)), may={"IL104"}),  # the grown features heat the head
]

CASES = [*IL301, *IL302, *IL303]
