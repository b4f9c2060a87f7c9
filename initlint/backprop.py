"""The backward half of the variance engine: gradient second moments from the outputs back to the inputs.

Each op's gradient is a sum of *terms*, one per origin (the output of the loss, or an op whose gradient has
been reduced to a second moment). A term's amplitude is a number, or values on the grid of the op's source
when the term came through elementwise ops of that source: there, terms of one origin add as amplitudes
(``x + x`` gets ``2 g``) and meet the activations' derivatives value by value; terms of different origins
are independent and add their second moments.

Rows of different scale (a CLS token next to patch tokens) divide a norm's gradient by their own scale, so a
gradient may be far larger in some rows than in others; a term carries that *row profile* through ops that
act row by row, and a concatenation hands each part the gradient of its own rows.

>>> from initlint.estimate import Est, Factor, Step
>>> from initlint.gains import gaussian
>>> from initlint.graph import ModelGraph
>>> from initlint.ops import Capture, Op, OpKind
>>> g = ModelGraph.build("m", Capture.FX, [Op("x", OpKind.INPUT, "input"), Op("y", OpKind.SCALE, "mul", ("x",)),
...                                       Op("output", OpKind.OUTPUT, "output", ("y",))])
>>> rules = {"x": gaussian(0.0, 1.0), "y": gaussian(0.0, 4.0)}
>>> ests = {"x": Est(1.0, source="x", requires_grad=True), "y": Est(4.0, source="y", requires_grad=True),
...         "output": Est(4.0, source="y")}
>>> steps = {"x": Step(), "y": Step(grads=(Factor(4.0),)), "output": Step()}
>>> backward(g, ests, steps, rules)["x"].second  # unit gradient at the output, times 4 through y = 2 x
4.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .estimate import Deriv, Est, Step
from .gains import Rule
from .graph import ModelGraph, Moments
from .ops import OpKind

Profile = tuple[float, ...]  # per row segment, the gradient's second moment relative to the op's average

# ops whose gradient at a row depends only on the same row: a row profile passes through them
ROWWISE = frozenset({OpKind.ACTIVATION, OpKind.SCALE, OpKind.MATH, OpKind.DROPOUT, OpKind.LINEAR, OpKind.NORM,
                     OpKind.PASSTHROUGH, OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.DIV, OpKind.WHERE,
                     OpKind.CONCAT})


class _Terms:
    """The gradient terms reaching one op: amplitude and row profile per origin."""

    def __init__(self):
        self.amp: dict[object, torch.Tensor | float] = {}
        self.profile: dict[object, Profile | None] = {}

    def add(self, origin, amp, profile: Profile | None, coherent: bool) -> None:
        if coherent and origin in self.amp:
            self.amp[origin] = self.amp[origin] + amp
        else:
            self.amp[origin] = amp
            self.profile[origin] = profile


def backward(graph: ModelGraph, ests: Mapping[str, Est], steps: Mapping[str, Step],
             rules: Mapping[str, Rule]) -> dict[str, Moments]:
    """Gradient second moments for unit, independent gradients at every float output."""
    terms: dict[str, _Terms] = {}
    for out in graph.of_kind(OpKind.OUTPUT):
        for i, name in enumerate(out.inputs):
            if ests[name].requires_grad:
                terms.setdefault(name, _Terms()).add(("loss", out.name, i), 1.0, None, False)
    back: dict[str, Moments] = {}
    for op in reversed(list(graph)):
        mine = terms.pop(op.name, None)
        est = ests[op.name]
        if mine is None or not mine.amp or not est.requires_grad:
            continue
        rule = rules[est.source]
        seconds = {o: rule.second(a) for o, a in mine.amp.items()}
        g = sum(seconds.values())
        back[op.name] = Moments(g, 0.0)
        profile = _combine(mine, seconds, g, est) if op.kind in ROWWISE or op.kind is OpKind.ATTENTION else None
        step = steps[op.name]
        for i, src in enumerate(op.inputs):
            grad = step.grads[i] if i < len(step.grads) else None
            if grad is None or not ests[src].requires_grad:
                continue
            into = terms.get(src)
            if into is None:
                into = terms[src] = _Terms()
            if isinstance(grad, Deriv):  # same grid: amplitudes add per origin
                value = grad.value
                one = isinstance(value, float) and value == 1.0  # a view or a copy: the amplitude as it is
                for origin, amp in mine.amp.items():
                    into.add(origin, amp if one else amp * value, mine.profile.get(origin), True)
                continue
            gain, passed = _rows_backward(op.kind, step, i, profile, ests[src])
            second = g * grad.gain * gain
            amp = math.sqrt(max(second, 0.0)) if not math.isnan(second) else second
            into.add((op.name, i), amp if grad.weights is None else amp * grad.weights.sqrt(), passed, False)
    return back


def _combine(mine: _Terms, seconds: dict, g: float, est: Est) -> Profile | None:
    """The op's row profile: its terms' profiles weighted by their second moments."""
    if not est.rows or g <= 0 or all(mine.profile.get(o) is None for o in mine.amp):
        return None
    n = len(est.rows)
    out = [0.0] * n
    for origin, s in seconds.items():
        p = mine.profile.get(origin)
        if p is not None and len(p) != n:
            return None
        for k in range(n):
            out[k] += s * (1.0 if p is None else p[k])
    return tuple(v / g for v in out)


def _normalized(fractions: list[float], weights: list[float]) -> Profile | None:
    total = sum(f * w for f, w in zip(fractions, weights))
    return tuple(w / total for w in weights) if total > 0 else None


def _rows_backward(kind: OpKind, step: Step, i: int, profile: Profile | None, src: Est):
    """``(gain multiplier, profile at the operand)`` for operand ``i``."""
    if profile is None and not step.row_gains:  # rows alike, or nothing to say of them: most ops
        return 1.0, None
    if kind is OpKind.CONCAT and step.row_parts and profile is not None:
        start = sum(step.row_parts[:i])
        part = slice(start, start + step.row_parts[i])
        fr = [f for f, _ in step.rows[part]]
        pr = list(profile[part])
        gain = sum(f * p for f, p in zip(fr, pr)) / sum(fr)
        return gain, _normalized(fr, pr) if len(pr) > 1 else None
    if kind is OpKind.NORM and step.row_gains and src.rows and len(step.row_gains) == len(src.rows):
        base = profile or (1.0,) * len(src.rows)
        fr = [f for f, _ in src.rows]
        weighted = [a * b for a, b in zip(base, step.row_gains)]
        average = sum(f * r for f, r in zip(fr, step.row_gains))  # what the norm's Factor already holds
        gain = sum(f * w for f, w in zip(fr, weighted)) / average if average > 0 else 1.0
        return gain, _normalized(fr, weighted)
    if (kind in ROWWISE or (kind is OpKind.ATTENTION and i == 0)) and profile is not None and src.rows \
            and len(src.rows) == len(profile):  # a query's gradient is its row's
        return 1.0, profile
    return 1.0, None


__all__ = ["backward", "ROWWISE", "Profile"]
