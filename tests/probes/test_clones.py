"""IL107 on a stack torch.fx can trace: one block deep-copied four times (the transformer case is tested with
IL204 in test_gradients)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .stage import NOT_REPRODUCED, confirmed_and_fixed, forced, one


class Block(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class Stack(nn.Module):
    def __init__(self, cloned=True, depth=4):
        super().__init__()
        torch.manual_seed(0)
        block = Block()
        self.blocks = nn.ModuleList(copy.deepcopy(block) if cloned else Block() for _ in range(depth))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def test_cloned_blocks_confirmed_and_fixed():
    f = one(Stack(), torch.randn(8, 16, 64), "IL107")
    confirmed_and_fixed(f)
    assert f.probe.measured["contribution_correlation"] > 0.6
    assert abs(f.probe.after_fix["contribution_correlation"]) < 0.3


def test_cloned_blocks_forced_on_independent_blocks_not_reproduced():
    model = Stack(cloned=False)
    f = forced(model, torch.randn(8, 16, 64), "IL107", "blocks_0_fc1", {"blocks": 4})
    assert f.probe.status is NOT_REPRODUCED, (dict(f.probe.measured), f.probe.detail)
