"""Predicted against measured: the per-op comparison behind ``initlint TARGET --signals``.

:func:`compare` pairs the engine's prediction (``graph.signals``) with the measurement pass that
``lint(..., signals=True)`` runs (the CLI's ``--signals``), for every op but the output.

>>> import torch
>>> from torch import nn
>>> from initlint.api import lint
>>> _ = torch.manual_seed(0)
>>> t = lint(nn.Sequential(nn.Linear(64, 64), nn.ReLU()), torch.randn(256, 64), select=[], signals=True).targets[0]
>>> row = compare(t.graph, t.measured)[-1]
>>> row.op, round(row.forward.ratio, 1)
('_1', 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .graph import ModelGraph, Signal
from .ops import OpKind


@dataclass(frozen=True)
class Pair:
    predicted: float | None
    measured: float | None

    @property
    def ratio(self) -> float | None:
        """predicted / measured, or None when either is missing, zero or not finite."""
        p, m = self.predicted, self.measured
        if p is None or m is None or not (math.isfinite(p) and math.isfinite(m)) or m <= 0 or p < 0:
            return None
        return p / m


@dataclass(frozen=True)
class Row:
    """One op: second moments of its output (forward) and of the gradient at it (backward)."""

    op: str
    module: str
    kind: OpKind
    forward: Pair
    backward: Pair

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "module": self.module, "kind": self.kind.value,
                "forward": {"predicted": _num(self.forward.predicted), "measured": _num(self.forward.measured)},
                "backward": {"predicted": _num(self.backward.predicted), "measured": _num(self.backward.measured)}}


def _num(v: float | None):
    return v if v is None or math.isfinite(v) else str(v)


def compare(graph: ModelGraph, measured: Mapping[str, Signal]) -> tuple[Row, ...]:
    rows = []
    for op in graph:
        if op.kind is OpKind.OUTPUT:
            continue
        p, m = graph.signal(op), measured.get(op.name)
        rows.append(Row(
            op.name, op.module, op.kind,
            Pair(p.forward.second if p else None, m.forward.second if m else None),
            Pair(p.backward.second if p and p.backward else None, m.backward.second if m and m.backward else None),
        ))
    return tuple(rows)


__all__ = ["Pair", "Row", "compare"]
