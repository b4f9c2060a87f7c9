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


def test_without_torch_fx_wrapper_maker_math_is_wrapped_by_torch_fx(monkeypatch):
    # a torch whose torch.fx lacks the private helper: torch.fx's own autowrap, at every trace
    monkeypatch.setattr(fx_mod, "_create_wrapped_func", None)
    before = dict(vars(math))
    graph = _trace(MathNet(), torch.randn(2, 4))
    targets = [n.target for n in graph.nodes if n.op == "call_function"]
    assert targets.count(math.sqrt) == 2 and math.floor in targets
    assert vars(math) == before


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


def test_create_arg_shortcut_gives_torch_fx_graph(monkeypatch):
    """The tracer's create_arg answers proxies, atoms and plain tuples and lists itself: the same graph, node for
    node, as torch.fx's own create_arg, on models with constants, keyword arguments, slices and sizes."""
    from initlint.examples import ScaledResidualMLP

    from .test_constants import Rotary

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.register_buffer("scale", torch.full((8,), 0.5))

        def forward(self, x):
            y = self.fc(x) * self.scale + torch.tensor([1.0]).expand(8)
            y = torch.cat([y, x[:, :4].repeat(1, 2)], dim=-1)
            return y.view(x.shape[0], -1, 4).transpose(1, 2).reshape(-1, x.size(1) * 2)

    cases = [(Mixed(), torch.randn(2, 8)), (ScaledResidualMLP(depth=2, width=8), torch.randn(2, 8))]
    cases.append((Rotary(), torch.randn(4, 12, 16)))
    for model, x in cases:
        ours = _trace(model, x)
        monkeypatch.setattr(fx_mod.Tracer, "create_arg", torch.fx.Tracer.create_arg)
        theirs = _trace(model, x)
        monkeypatch.undo()
        assert str(ours) == str(theirs)
        assert [n.meta.get(fx_mod._LOC) for n in ours.nodes] == [n.meta.get(fx_mod._LOC) for n in theirs.nodes]


def test_quick_init_keeps_the_dataclass():
    import dataclasses
    import pickle

    import pytest

    from initlint.ops import Location, Op, OpKind, quick_init

    op = Op("fc", OpKind.LINEAR, "nn.Linear", shape=(2, 4), location=Location("m.py", 3))
    assert op == Op(name="fc", kind=OpKind.LINEAR, target="nn.Linear", inputs=(), shape=(2, 4),
                    location=Location("m.py", 3, None))
    assert hash(op) == hash(dataclasses.replace(op)) and op.module == "" and op.weight is None
    assert pickle.loads(pickle.dumps(op)) == op
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.name = "other"
    with pytest.raises(TypeError):
        Op("fc", OpKind.LINEAR)  # the target is required

    @dataclasses.dataclass(frozen=True)
    class Factory:
        items: list = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="needs the generated __init__"):
        quick_init(Factory)
