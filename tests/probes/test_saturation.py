"""IL302: measured saturated fraction and gradient factor through a bounded activation."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from .stage import NOT_REPRODUCED, confirmed_and_fixed, one

# IL302's docs: 64% saturated measured for 66% predicted on 20,000 inputs; on 64 x 256 values within 0.05.
FRACTION_TOLERANCE = 0.05


def tanh_net(std=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10))
    if std is not None:
        nn.init.normal_(model[0].weight, std=std)
    return model


def test_saturated_activation_confirmed_and_fixed():
    f = one(tanh_net(std=0.25), torch.randn(64, 256), "IL302")
    confirmed_and_fixed(f)
    m = f.probe.measured
    assert abs(m["saturated_fraction"] - f.predicted["saturated_fraction"]) < FRACTION_TOLERANCE, m
    assert f.probe.after_fix["saturated_fraction"] < 0.2


def test_saturated_activation_forced_on_default_init_not_reproduced(monkeypatch):
    monkeypatch.setattr(importlib.import_module("initlint.rules.saturated_activation"), "WARN_FRACTION", 0.0)
    f = one(tanh_net(), torch.randn(64, 256), "IL302")
    assert f.probe.status is NOT_REPRODUCED and f.probe.measured["saturated_fraction"] < 0.1
