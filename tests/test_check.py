"""Running rules over a graph: one finding per defect in the source, not one per loop iteration."""

from __future__ import annotations

import torch
from torch import nn

from initlint import lint
from initlint.examples import HandDropoutMLP


def test_a_loop_running_one_defective_line_gives_one_finding_with_its_count():
    model = HandDropoutMLP(depth=4)
    (f,) = lint(model, model.example_inputs(), select=["IL206"]).findings
    assert f.op == "mul" and f.predicted["repeats"] == 4  # the first of the four, in graph order
    assert f.message.endswith("(this line runs 4 times: also `mul_1`, `mul_2`, `mul_3`)")


class OffScale(nn.Module):
    """Every layer 8x its variance-preserving std, applied in one loop line: each fix names its own weight."""

    def __init__(self, depth=3, d=64):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(depth))
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=8 / d**0.5)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def test_near_miss_same_line_with_different_fixes_stays_apart():
    torch.manual_seed(0)
    found = lint(OffScale(), torch.randn(32, 64), select=["IL101"]).findings
    assert [f.module for f in found] == ["layers.0", "layers.1", "layers.2"]
    assert len({f.location for f in found}) == 1 and len({f.fix.code for f in found}) == 3
    assert all("repeats" not in f.predicted for f in found)
