"""The typed graph rules run on: frozen :class:`~initlint.ops.Op` records plus a read-only networkx DiGraph.

>>> from initlint.ops import Op, OpKind
>>> g = ModelGraph.build("m", Capture.FX, [
...     Op("x", OpKind.INPUT, "input"),
...     Op("relu", OpKind.ACTIVATION, "relu", inputs=("x",)),
...     Op("out", OpKind.OUTPUT, "output", inputs=("relu",)),
... ])
>>> [op.name for op in g.consumers(g.op("x"))]
['relu']
>>> g.dag.has_edge("x", "relu")
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

import networkx as nx

from .ops import Capture, Op, OpKind, quick_init


@quick_init
@dataclass(frozen=True)
class Moments:
    """Elementwise statistics of a tensor: mean and second moment ``E[x^2]`` (variance = second - mean^2)."""

    second: float
    mean: float = 0.0

    @property
    def variance(self) -> float:
        return max(self.second - self.mean**2, 0.0)


@quick_init
@dataclass(frozen=True)
class Signal:
    """What the variance engine predicts (or measures) at one op's output.

    ``forward`` describes the activations; ``backward`` the gradient of the loss with respect to them
    (``None`` where no gradient flows, e.g. integer ids). ``max_abs`` is filled by measurements.
    """

    forward: Moments
    backward: Moments | None = None
    max_abs: float | None = None


@dataclass(frozen=True)
class ModelGraph:
    model_name: str
    capture: Capture
    ops: Mapping[str, Op]  # in topological order
    dag: nx.DiGraph = field(repr=False)  # frozen; node = op name, edge = producer -> consumer
    notes: tuple[str, ...] = ()  # how the capture went: fallbacks and why
    signals: Mapping[str, Signal] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(
        cls, model_name: str, capture: Capture, ops: Iterable[Op], notes: tuple[str, ...] = ()
    ) -> "ModelGraph":
        table = {op.name: op for op in ops}
        edges = []
        for op in table.values():
            for src in op.inputs:
                if src not in table:
                    raise ValueError(f"op `{op.name}` reads `{src}`, which is not in the graph")
                edges.append((src, op.name))
        dag = nx.DiGraph()
        dag.add_nodes_from(table)
        dag.add_edges_from(edges)  # one call: add_edge clears networkx's caches at each edge (half the build)
        return cls(model_name, capture, MappingProxyType(table), nx.freeze(dag), notes)

    def with_signals(self, signals: Mapping[str, Signal]) -> "ModelGraph":
        return dataclasses.replace(self, signals=MappingProxyType(dict(signals)))

    # -- navigation ----------------------------------------------------------------------------------------

    def op(self, name: str) -> Op:
        return self.ops[name]

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops.values())

    def __len__(self) -> int:
        return len(self.ops)

    def producers(self, op: Op) -> tuple[Op, ...]:
        """The ops feeding ``op``, in argument order (repeated when an operand is used twice)."""
        return tuple(self.ops[n] for n in op.inputs)

    def consumers(self, op: Op) -> tuple[Op, ...]:
        return tuple(self.ops[n] for n in self.dag.successors(op.name))

    def of_kind(self, *kinds: OpKind) -> tuple[Op, ...]:
        return tuple(op for op in self.ops.values() if op.kind in kinds)

    def ancestors(self, op: Op) -> set[str]:
        return nx.ancestors(self.dag, op.name)

    def descendants(self, op: Op) -> set[str]:
        return nx.descendants(self.dag, op.name)

    @cached_property
    def memo(self) -> dict:
        """Scratch space for pure functions of this graph (pattern helpers cache their answers here); a
        graph with new signals starts with an empty one."""
        return {}

    @cached_property
    def _position(self) -> Mapping[str, int]:
        return MappingProxyType({name: i for i, name in enumerate(self.ops)})

    def position(self, op: Op | str) -> int:
        """The op's index in topological order."""
        return self._position[op if isinstance(op, str) else op.name]

    def ancestors_from(self, op: Op, floor: int) -> set[str]:
        """The ancestors of ``op`` at positions ``>= floor``: exactly the ops on paths from any op at ``floor`` or
        later to ``op``, found without walking the whole graph (a residual block's region, not the model)."""
        pos, seen, stack = self._position, set(), [op.name]
        while stack:
            for src in self.ops[stack.pop()].inputs:
                if src not in seen and pos[src] >= floor:
                    seen.add(src)
                    stack.append(src)
        return seen

    def descendants_until(self, op: Op, ceiling: int) -> set[str]:
        """The descendants of ``op`` at positions ``<= ceiling``."""
        pos, seen, stack = self._position, set(), [op.name]
        while stack:
            for dst in self.dag.successors(stack.pop()):
                if dst not in seen and pos[dst] <= ceiling:
                    seen.add(dst)
                    stack.append(dst)
        return seen

    @property
    def has_weight_values(self) -> bool:
        """False when some layer's weights have no values (a model on the ``meta`` device)."""
        return all(op.weight.tensor is not None for op in self.ops.values() if op.weight is not None)

    @property
    def unknown(self) -> tuple[str, ...]:
        """Targets of the ops with no known semantics, each once, in order of appearance."""
        return tuple(dict.fromkeys(op.target for op in self.ops.values() if op.kind is OpKind.UNKNOWN))

    def signal(self, op: Op | str) -> Signal | None:
        return self.signals.get(op if isinstance(op, str) else op.name)
