"""Constants computed in forward (positions, rotary tables) are evaluated at capture, not estimated."""

from __future__ import annotations

import math

import torch
from torch import nn

from initlint.capture import capture
from initlint.load import from_instance
from initlint.ops import OpKind
from initlint.propagate import propagate


class Rotary(nn.Module):
    """Llama's rotary embedding, written out: positions from ``arange`` times a buffer of frequencies, whose
    ``cos`` and ``sin`` multiply the queries. Also a causal mask of -1e9, a dropout and a scaled weight."""

    def __init__(self, d: int = 16, t: int = 12):
        super().__init__()
        self.t = t
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d), persistent=False)
        self.q = nn.Linear(d, d)

    def forward(self, x):
        pos = torch.arange(self.t, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        q = self.q(x)
        half = q.shape[-1] // 2
        rotated = torch.cat((-q[..., half:], q[..., :half]), dim=-1)
        q = q * emb.cos() + rotated * emb.sin()
        mask = torch.full((self.t, self.t), -1e9).triu(1)
        logits = q @ q.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask
        noise = torch.nn.functional.dropout(torch.ones(self.t), 0.5)
        return logits.softmax(-1) @ q * self.q.weight.sum() + noise[:, None]


def _graph(rung: str):
    torch.manual_seed(0)
    model, x = Rotary(), torch.randn(4, 12, 16)
    target = from_instance(model, x)
    return propagate(capture(target, rung), target.inputs, model=model), model


def test_export_evaluates_the_rotary_tables():
    graph, model = _graph("export")
    emb = torch.cat([torch.outer(torch.arange(12.0), model.inv_freq)] * 2, -1)
    q = graph.signal("linear").forward.second
    assert not any(op.target in ("aten.cos.default", "aten.sin.default") for op in graph)  # read, not estimated
    # q * cos and rotate(q) * sin: the queries' second moment times each table's own, which sum to 1
    cos, sin = (float(getattr(emb, fn)().square().mean()) for fn in ("cos", "sin"))
    assert math.isclose(graph.signal("mul").forward.second, q * cos, rel_tol=1e-6)
    assert math.isclose(graph.signal("mul_1").forward.second, q * sin, rel_tol=1e-6)
    assert sin < 0.2  # the estimate this replaces took sin and cos as balanced, 0.5 each


def test_export_leaves_masks_random_ops_and_parameters_alone():
    graph, _ = _graph("export")
    kinds = {op.target: op.kind for op in graph}
    assert kinds["aten.triu.default"] is not OpKind.PARAM  # an additive mask of -1e9 is not a table to read
    assert kinds["aten.dropout.default"] is OpKind.DROPOUT  # the dropout of a constant is not run
    assert kinds["aten.sum.default"] is OpKind.REDUCE  # computed from a parameter: stays an op of the weights


def test_capture_does_not_move_the_rng():
    state = torch.get_rng_state()
    torch.manual_seed(0)
    model, x = Rotary(), torch.randn(4, 12, 16)
    before = torch.get_rng_state()
    capture(from_instance(model, x), "export")
    assert torch.equal(before, torch.get_rng_state())
    torch.set_rng_state(state)


def test_fx_evaluates_the_rotary_tables_as_export_does():
    fx, model = _graph("fx")
    ex, _ = _graph("export")
    q = fx.signal("q").forward.second
    emb = torch.cat([torch.outer(torch.arange(12.0), model.inv_freq)] * 2, -1)
    assert not any(op.target in ("torch.cos", "Tensor.cos", "Tensor.sin", "torch.sin") for op in fx)
    assert math.isclose(fx.signal("mul").forward.second, q * float(emb.cos().square().mean()), rel_tol=1e-6)
    assert math.isclose(fx.signal("mul").forward.second, ex.signal("mul").forward.second, rel_tol=1e-6)


def test_fx_takes_numbers_from_shapes_as_literals():
    """``/ math.sqrt(q.shape[-1])``: torch.export specializes it to ``/ 4.0``, torch.fx traces the arithmetic;
    it was an op of second moment 0, and the logits were predicted 1e30."""
    fx, _ = _graph("fx")
    ex, _ = _graph("export")
    assert not any(op.target == "math.sqrt" for op in fx)
    assert math.isclose(fx.signal("truediv").forward.second, ex.signal("div").forward.second, rel_tol=1e-3)
