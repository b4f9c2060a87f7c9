"""Capture fix: weights that a handler rebuilds from a parameter operand keep ``trainable`` (torch.export path).

Before the fix every LINEAR/CONV weight of an exported graph read ``trainable=False``, because the handlers
computed statistics from the operand's detached view; rules that skip frozen weights (IL106) then saw none.
"""

from __future__ import annotations

import torch
from torch import nn

from initlint.capture import capture
from initlint.load import from_instance
from initlint.ops import OpKind


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)  # needs torch.export
        self.fc, self.frozen = nn.Linear(8, 8), nn.Linear(8, 8)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.frozen(self.fc(x + self.attn(x, x, x, need_weights=False)[0]))


def test_exported_weights_keep_their_trainability():
    model = Model()
    g = capture(from_instance(model, torch.randn(2, 3, 8)), "export")
    layers = {op.weight.name: op for op in g.of_kind(OpKind.LINEAR)}
    assert layers["fc.weight"].weight.trainable and layers["fc.weight"].bias.trainable
    assert layers["attn.in_proj_weight"].weight.trainable
    assert not layers["frozen.weight"].weight.trainable and not layers["frozen.weight"].bias.trainable
    assert all(p.requires_grad for p in model.fc.parameters())  # and nothing was changed on the model
