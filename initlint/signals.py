"""Predicted against measured: the per-op comparison behind ``initlint TARGET --signals``.

:func:`compare` pairs the engine's prediction (``graph.signals``) with a measurement pass for every op but
the output; :func:`with_measurements` runs that pass for the targets of a report (the CLI's path, which
lints through the project configuration first).

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

import dataclasses
import math
from collections.abc import Mapping, Sequence
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


def with_measurements(report, config, targets: Sequence[str], device: str):
    """``report`` with each target's graph propagated against a measurement pass (``report.targets`` are in
    the order of ``targets``, or of the configured targets when none are given). The targets are loaded and
    captured again, so that the lint itself stays as the configuration made it."""
    from .api import lint
    from .project import _resolve

    chosen = [config.target(text) for text in targets] or list(config.targets)
    out = []
    for tr, t in zip(report.targets, chosen):
        if tr.error is not None:
            out.append(tr)
            continue
        text = _resolve(t.target, config.root) if t.from_file else t.target
        options = {**config.lint_options(t), "select": [], "signals": True, "device": device}
        measured = lint(text, **options).targets[0]
        if measured.error is not None:
            out.append(dataclasses.replace(tr, error=measured.error, exception=measured.exception))
        else:
            out.append(dataclasses.replace(tr, graph=measured.graph, measured=measured.measured))
    return dataclasses.replace(report, targets=tuple(out))


__all__ = ["Pair", "Row", "compare", "with_measurements"]
