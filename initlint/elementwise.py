"""Transfer functions of elementwise ops: activations, arithmetic, math, masks, dropout and reshapes.

Operands that are functions of the same source are combined value by value on the source's grid, so
``x + x`` has four times the second moment of ``x``, ``x * sigmoid(x)`` is SiLU, and GELU written out in
seven ops (GPT-2) comes out as GELU. Operands of different sources are independent: their second moments and
means combine by the product rules (``E[(a+b)^2] = E[a^2] + E[b^2] + 2 E[a] E[b]``), which is why branches
ending in ReLU add their means coherently.

>>> import torch
>>> from initlint.gains import gaussian
>>> from initlint.graph import ModelGraph
>>> from initlint.ops import Capture, Op, OpKind
>>> g = ModelGraph.build("m", Capture.FX, [Op("x", OpKind.INPUT, "input"), Op("y", OpKind.ADD, "add", ("x", "x"))])
>>> ctx = Ctx(g, {"x": gaussian(0.0, 1.0)})
>>> x = Est(1.0, 0.0, source="x", values=ctx.rules["x"].nodes)
>>> step = TABLE[OpKind.ADD](g.op("y"), [x, x], ctx)
>>> round(ctx.rules["x"].second(step.values), 6)  # x + x: 4, not 2
4.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .estimate import Ctx, Deriv, Est, Factor, Step, bcast
from .gains import DTYPE, Rule, activation_with_derivative, bernoulli, mixture, point, with_derivative
from .ops import MathFn, Op, OpKind

_TINY = 1e-30  # floor of the argument of sqrt, rsqrt, log and reciprocal on the grid


def inside(source: str, values: torch.Tensor, *derivs: torch.Tensor | float | None) -> Step:
    """An elementwise step on the grid of ``source``."""
    return Step(values=values, source=source, grads=tuple(None if d is None else Deriv(d) for d in derivs))


def rerooted(ctx: Ctx, x: Est, values: torch.Tensor | None = None, gain: float = 1.0, **kw) -> Step:
    """A new source with the distribution of ``values`` (default: x's own) under x's grid."""
    rule = ctx.rule(x)
    v = x.values if values is None else values
    if v is x.values and ctx.ests.get(x.source) is not x:  # x's moments are those of its values on the grid
        second, mean = x.second, x.mean
    else:
        m = rule.moments(v)
        second, mean = m.second, m.mean
    return Step(second, mean, x.unit, rule=Rule(v, rule.weights), own=True, grads=(Factor(gain),), **kw)


# -- activations, scale, math ------------------------------------------------------------------------------


def _activation(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step:
    y, d = activation_with_derivative(op.params, ins[0].values, rounded=True)
    return inside(ins[0].source, y, d)


def _scale(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step:
    p = op.params
    return inside(ins[0].source, ins[0].values * p.factor + p.shift, p.factor)


def _pos(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(min=_TINY)


_MATH: dict[MathFn, Callable[..., Callable[[torch.Tensor], torch.Tensor]]] = {
    MathFn.POW: lambda p: (lambda x: torch.pow(x, p.exponent)),
    MathFn.SQRT: lambda p: (lambda x: torch.sqrt(_pos(x))),
    MathFn.RSQRT: lambda p: (lambda x: torch.rsqrt(_pos(x))),
    MathFn.EXP: lambda p: torch.exp,
    MathFn.LOG: lambda p: (lambda x: torch.log(_pos(x))),
    MathFn.ABS: lambda p: torch.abs,
    MathFn.RECIPROCAL: lambda p: (lambda x: 1.0 / torch.where(x.abs() < _TINY, _TINY, x)),
    MathFn.SQUARE: lambda p: torch.square,
    MathFn.SIN: lambda p: torch.sin,
    MathFn.COS: lambda p: torch.cos,
    MathFn.CLAMP: lambda p: (lambda x: torch.clamp(x, p.min_val, p.max_val)),
}


def _math(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step:
    y, d = with_derivative(_MATH[op.params.fn](op.params), ins[0].values)
    return inside(ins[0].source, torch.nan_to_num(y), torch.nan_to_num(d))


# -- binary arithmetic -------------------------------------------------------------------------------------

_SAME: dict[OpKind, Callable] = {  # values and derivatives when both operands live on one grid
    OpKind.ADD: lambda a, b: (a + b, 1.0, 1.0),
    OpKind.SUB: lambda a, b: (a - b, 1.0, -1.0),
    OpKind.MUL: lambda a, b: (a * b, b, a),
    OpKind.DIV: lambda a, b: (a / _nz(b), 1.0 / _nz(b), -a / _nz(b) ** 2),
}


def _nz(b: torch.Tensor) -> torch.Tensor:
    return torch.where(b.abs() < _TINY, _TINY, b)


def _binary(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    if len(ins) == 1:  # an operand was a constant the capture folded away
        return inside(ins[0].source, ins[0].values, 1.0)
    a, b = ins[0], ins[1]
    if a.source == b.source:
        values, da, db = _SAME[op.kind](a.values, b.values)
        return inside(a.source, values, da, db)
    return _independent(op, a, b, ctx)


def _independent(op: Op, a: Est, b: Est, ctx: Ctx) -> Step:
    ra, rb = ctx.rule(a), ctx.rule(b)
    kind = op.kind
    if kind is OpKind.DIV:
        inv2 = rb.expect(1.0 / _nz(b.values) ** 2)
        inv = rb.expect(1.0 / _nz(b.values))
        second, mean = a.second * inv2, a.mean * inv
        unit = a.unit * inv * inv
        ga, gb = inv2, a.second * rb.expect(1.0 / _nz(b.values) ** 4)
    elif kind is OpKind.MUL:
        second, mean = a.second * b.second, a.mean * b.mean
        unit = a.mean**2 * b.unit + b.mean**2 * a.unit + a.unit * b.unit
        ga, gb = b.second, a.second
    else:
        sign = 1.0 if kind is OpKind.ADD else -1.0
        second = a.second + b.second + 2 * sign * a.mean * b.mean
        mean, unit, ga, gb = a.mean + sign * b.mean, a.unit + b.unit, 1.0, 1.0
    rule = _exact(kind, ra, a.values, rb, b.values)
    if rule is not None:
        m = rule.moments(rule.nodes)
        second, mean = m.second, m.mean
    return Step(second, mean, unit, rule=rule, own=rule is not None,
                grads=(Factor(ga * bcast(op, a)), Factor(gb * bcast(op, b))))


def _exact(kind: OpKind, ra: Rule, va: torch.Tensor, rb: Rule, vb: torch.Tensor) -> Rule | None:
    """The exact distribution when one operand takes few values (a mask, a constant): a mixture."""
    if len(rb.weights) > 2 and len(ra.weights) > 2:
        return None
    swap = len(rb.weights) > len(ra.weights)
    (big, vbig), (small, vsmall) = ((rb, vb), (ra, va)) if swap else ((ra, va), (rb, vb))
    fn = _SAME[kind]
    parts = []
    for value, weight in zip(vsmall.tolist(), small.weights.tolist()):
        c = torch.tensor(value, dtype=DTYPE)
        out = fn(c, vbig)[0] if swap else fn(vbig, c)[0]
        parts.append((big, torch.as_tensor(out, dtype=DTYPE).expand_as(big.weights), weight))
    return mixture(parts)


# -- masks -------------------------------------------------------------------------------------------------

_COMPARE = {"gt": torch.gt, "lt": torch.lt, "ge": torch.ge, "le": torch.le, "eq": torch.eq, "ne": torch.ne}


def _compare(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    cmp = _COMPARE.get(op.params.op)
    if cmp is None:
        return None
    if len(ins) == 1:
        if op.params.threshold is None:
            return None
        return inside(ins[0].source, cmp(ins[0].values, op.params.threshold).to(DTYPE), None)
    a, b = ins[0], ins[1]
    if a.source == b.source:
        return inside(a.source, cmp(a.values, b.values).to(DTYPE), None, None)
    ra, rb = ctx.rule(a), ctx.rule(b)
    p = float((ra.weights[:, None] * rb.weights[None, :] * cmp(a.values[:, None], b.values[None, :])).sum())
    return Step(p, p, rule=bernoulli(p), grads=(None, None))


def _where(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    conds = [i for i, e in enumerate(ins) if not e.floating]
    signals = [i for i, e in enumerate(ins) if e.floating]
    if not signals:
        return None
    if len(signals) == 1:  # masked_fill(x, mask, value): the filled entries are not modelled
        x = ins[signals[0]]
        grads = [None] * len(ins)
        grads[signals[0]] = Factor(1.0)
        return Step(x.second, x.mean, x.unit, rule=Rule(x.values, ctx.rule(x).weights), grads=tuple(grads))
    q = ins[conds[0]].mean if conds else 0.5  # fraction of entries taken from the first signal
    a, b = ins[signals[0]], ins[signals[1]]
    grads = [None] * len(ins)
    grads[signals[0]], grads[signals[1]] = Factor(q * bcast(op, a)), Factor((1 - q) * bcast(op, b))
    rule = mixture([(ctx.rule(a), a.values, q), (ctx.rule(b), b.values, 1 - q)])
    m = rule.moments(rule.nodes)
    return Step(m.second, m.mean, q * a.unit + (1 - q) * b.unit, rule=rule, own=True, grads=tuple(grads))


def _dropout(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step:
    p, x = op.params, ins[0]
    # a module dropout runs in training mode when measured; a functional one keeps its captured flag
    active = (p.active or (ctx.training and op.target.startswith("nn."))) and "Alpha" not in op.target
    if not active or p.p <= 0:
        return inside(x.source, x.values, 1.0)
    if p.p >= 1:
        return Step(0.0, 0.0, rule=point(0.0), grads=(Factor(0.0),))
    keep = 1.0 - p.p
    scale = 1.0 / keep if p.inverted else 1.0
    rule = mixture([(ctx.rule(x), x.values * scale, keep), (point(0.0), torch.zeros(1, dtype=DTYPE), p.p)])
    m = rule.moments(rule.nodes)
    return Step(m.second, m.mean, x.unit * (keep * scale) ** 2, rule=rule, own=True,
                grads=(Factor(keep * scale * scale),))


# -- reshapes and copies -----------------------------------------------------------------------------------

ALIGNED = frozenset({
    "view", "reshape", "unsafe_view", "flatten", "unflatten", "contiguous", "clone", "unsqueeze", "squeeze",
    "to", "type", "float", "half", "double", "bfloat16", "to_copy", "type_as", "alias", "view_as", "reshape_as",
    "identity", "lift_fresh_copy", "copy", "lift", "requires_grad", "cpu", "cuda", "long", "int", "bool",
    "nan_to_num", "detach",
})
_RESHAPES = frozenset({"view", "reshape", "unsafe_view", "flatten", "unflatten", "view_as", "reshape_as"})
_ZERO_PADS = frozenset({"pad", "constant_pad_nd", "zeropad1d", "zeropad2d", "zeropad3d", "constantpad1d",
                        "constantpad2d", "constantpad3d"})
SPLITS = frozenset({"split", "chunk", "unbind", "split_with_sizes", "tensor_split"})


def base_name(target: str) -> str:
    """``aten.view.default`` -> ``view``; ``Tensor.view`` -> ``view``; ``nn.Flatten`` -> ``flatten``."""
    parts = target.split(".")
    name = parts[1] if parts[0] == "aten" and len(parts) > 1 else parts[-1]
    return name.strip("_").lower()


def _passthrough(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    if not ins:
        return None
    x, name = ins[0], base_name(op.target)
    if name in ALIGNED:
        values = (x.values != 0).to(DTYPE) if name == "bool" else x.values
        cf = x.channels_first and not (name in _RESHAPES and len(op.shape or ()) != x.rank)
        step = inside(x.source, values, None if name == "detach" else 1.0)
        return Step(values=step.values, source=step.source, grads=step.grads, channels_first=cf)
    if name in SPLITS:
        return rerooted(ctx, x, gain=1.0)
    n_out, n_in = op.numel, x.numel
    if name in _ZERO_PADS and n_out and n_in and n_out > n_in:
        kept = n_in / n_out
        rule = mixture([(ctx.rule(x), x.values, kept), (point(0.0), torch.zeros(1, dtype=DTYPE), 1 - kept)])
        m = rule.moments(rule.nodes)
        return Step(m.second, m.mean, x.unit * kept, rule=rule, own=True, grads=(Factor(1.0),))
    producer = ctx.graph.op(op.inputs[0])
    if base_name(producer.target) in SPLITS and producer.inputs:  # one chunk of a split
        n_in = ctx.graph.op(producer.inputs[0]).numel
    gain = n_out / n_in if n_out and n_in else 1.0
    return rerooted(ctx, x, gain=gain, channels_first=False if len(op.shape or ()) != x.rank else None)


TABLE = {
    OpKind.ACTIVATION: _activation,
    OpKind.SCALE: _scale,
    OpKind.MATH: _math,
    OpKind.ADD: _binary,
    OpKind.SUB: _binary,
    OpKind.MUL: _binary,
    OpKind.DIV: _binary,
    OpKind.COMPARE: _compare,
    OpKind.WHERE: _where,
    OpKind.DROPOUT: _dropout,
    OpKind.PASSTHROUGH: _passthrough,
}

__all__ = ["TABLE", "inside", "rerooted", "base_name", "ALIGNED", "SPLITS"]
