"""The capture's shortcuts keep torch.fx's behaviour: math functions wrapped once per process, not per trace."""

from __future__ import annotations

import math
from math import sqrt

import torch
from torch import nn

from initlint.capture import fx as fx_mod
from initlint.load import from_instance


class MathNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        return y * math.sqrt(x.shape[-1]) + math.floor(y.sum()) + sqrt(y.mean())


def _trace(model, x):
    return fx_mod.trace(model, from_instance(model, (x,)).inputs)[0]


def test_math_on_proxies_is_traced_and_math_is_left_as_it_was():
    before = dict(vars(math))
    model, x = MathNet(), torch.randn(2, 4)
    for _ in range(2):  # the second trace reuses the wrappers made by the first
        graph = _trace(model, x)
        targets = [n.target for n in graph.nodes if n.op == "call_function"]
        assert targets.count(math.sqrt) == 2 and math.floor in targets  # `math.sqrt` and `from math import sqrt`
        assert vars(math) == before
    assert sqrt is math.sqrt


def test_math_wrappers_are_restored_when_the_trace_fails():
    class Broken(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # control flow on a proxy: torch.fx raises
                return x
            return -x

    before = dict(vars(math))
    try:
        _trace(Broken(), torch.randn(2))
    except Exception:  # noqa: BLE001
        pass
    assert vars(math) == before
