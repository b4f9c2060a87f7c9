"""The variance engine: predict every op's forward and backward second moments without running the model.

Forward, in topological order, each op's transfer function (one per :class:`~initlint.ops.OpKind`, in
:mod:`initlint.transfer`, :mod:`initlint.attention`, :mod:`initlint.elementwise` and
:mod:`initlint.recurrent`) turns its operands' estimates into its own: second moment, mean, per-unit mean
variance and distribution. Inputs are unit Gaussians, or have the statistics of the example inputs when
given. The model is assumed in training mode: BatchNorm normalizes with batch statistics and dropout is
active.

Backward, in reverse topological order, starts from the loss convention ``L = sum_i <y_i, r_i>`` over the
model's float outputs ``y_i`` with ``r_i ~ N(0, 1)``: the gradient at each output has second moment 1 and is
independent of the forward pass. Each op sends back its gradient times its transfer's gain; gradients reaching
one tensor along paths that are elementwise functions of one source add coherently (``x + x`` gets ``2 g``),
others add their second moments.

An op without a transfer function (``UNKNOWN``, a ``full`` of unknown value) keeps its first operand's
estimate, or the measurement when one is given; it is listed in :attr:`Prediction.fallback`.

>>> import torch
>>> from torch import nn
>>> from initlint.capture import capture
>>> from initlint.load import from_instance
>>> _ = torch.manual_seed(0)
>>> g = propagate(capture(from_instance(nn.Sequential(nn.Linear(512, 512), nn.ReLU()))))
>>> s = g.signal("_1")  # nn.Linear's default init has E[W^2] = 1 / (3 fan_in): x 1/3, then ReLU x 1/2
>>> round(s.forward.second, 2), round(s.backward.second, 1)
(0.17, 1.0)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import attention, elementwise, recurrent, transfer
from .backprop import ROWWISE, backward
from .estimate import Ctx, Deriv, Est, Factor, Step, Transfer
from .gains import DTYPE, Rule, compressed_gaussian, gaussian, interpolate, matched, point, unread_gaussian
from .graph import ModelGraph, Moments, Signal
from .ops import NormKind, Op, OpKind

TABLE: dict[OpKind, Transfer] = {**transfer.TABLE, **attention.TABLE, **elementwise.TABLE,
                                  OpKind.RECURRENT: recurrent.transfer}
_NO_GRAD = frozenset({OpKind.COMPARE, OpKind.RANDOM, OpKind.FACTORY})
# Ops whose transfer functions read their operands' moments and never their values on the grid. A source read
# only by these (a conv's output feeding a norm) needs no nodes: nothing lives on its grid, so its rule is read
# for nothing but its weights (backward's second moments of amplitudes on it, which are numbers here).
_MOMENTS_ONLY = frozenset({OpKind.CONV, OpKind.LINEAR, OpKind.NORM, OpKind.MATMUL, OpKind.SOFTMAX, OpKind.ATTENTION,
                           OpKind.RECURRENT})
_EXACT = frozenset({OpKind.INPUT, OpKind.PARAM, OpKind.OUTPUT})  # statistics read, not predicted


@dataclass(frozen=True)
class Prediction:
    signals: Mapping[str, Signal]
    fallback: tuple[str, ...] = ()  # ops with no transfer function: first operand's (or measured) estimate

    def covered(self, graph: ModelGraph) -> tuple[str, ...]:
        """Ops whose forward statistics are predicted by a transfer function (inputs and outputs excluded)."""
        skip = set(self.fallback)
        return tuple(op.name for op in graph if op.kind not in _EXACT and op.name not in skip)


def propagate(graph: ModelGraph, inputs: Any = None, *, model: nn.Module | None = None,
              measured: Mapping[str, Signal] | None = None) -> ModelGraph:
    """``graph`` with a predicted :class:`~initlint.graph.Signal` for every op."""
    return graph.with_signals(predict(graph, inputs, model=model, measured=measured).signals)


def predict(graph: ModelGraph, inputs: Any = None, *, model: nn.Module | None = None,
            measured: Mapping[str, Signal] | None = None) -> Prediction:
    """Forward then backward over ``graph``. ``inputs``: example inputs whose statistics replace the unit
    Gaussian; ``model``: read for declared attention causality (``is_causal``) only; ``measured``: the
    fallback for ops with no transfer function."""
    ctx = Ctx(graph, {}, causal=_causal(graph, model))
    tensors = _input_tensors(graph, inputs)
    ests = ctx.ests
    steps: dict[str, Step] = {}
    fallback: list[str] = []
    read = {name for op in graph if op.kind not in _MOMENTS_ONLY for name in op.inputs}
    for op in graph:
        ins = [ests[n] for n in op.inputs]
        step = None if fallback and _part_of_fallback(op, fallback) else _transfer(op, ins, ctx, tensors)
        if step is None:
            fallback.append(op.name)
            if ins and ins[0].values is None:  # an op that reads moments only fell back to its operand's values
                ins[0] = _placed(op.inputs[0], ctx)
            step = _fallback(op, ins, (measured or {}).get(op.name))
        steps[op.name] = step
        ests[op.name] = _settle(op, step, ins, ctx, ests, op.name in read)
    back = backward(graph, ests, steps, ctx.rules)
    signals = {name: Signal(Moments(max(e.second, 0.0), e.mean), back.get(name)) for name, e in ests.items()}
    return Prediction(signals, tuple(fallback))


def _transfer(op: Op, ins: list[Est], ctx: Ctx, tensors: dict[str, torch.Tensor]) -> Step | None:
    if op.kind is OpKind.INPUT:
        return _input(op, tensors.get(op.name))
    if op.kind is OpKind.OUTPUT:
        return Step(values=ins[0].values, source=ins[0].source) if ins else Step(0.0, rule=point(0.0))
    fn = TABLE.get(op.kind)
    if fn is None:
        return None
    try:
        return fn(op, ins, ctx)
    except (ArithmeticError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise type(exc)(f"while propagating op `{op.name}` ({op.target}): {exc}") from exc


def _part_of_fallback(op: Op, fallback: list[str]) -> bool:
    """An element taken out of the tuple an unknown op returned is as unknown as the op."""
    return op.target.endswith("getitem") and bool(op.inputs) and op.inputs[0] in fallback


def _input(op: Op, tensor: torch.Tensor | None) -> Step:
    if tensor is None or tensor.is_meta or tensor.numel() == 0:
        return Step(1.0, 0.0, rule=gaussian(0.0, 1.0))
    t = tensor.detach().to("cpu", DTYPE)
    unit = transfer.unit_variance(t, 1 if t.dim() >= 4 else -1) if t.is_floating_point() else 0.0
    return Step(float(t.square().mean()), float(t.mean()), unit, rule=transfer.empirical(tensor))


def _fallback(op: Op, ins: list[Est], measured: Signal | None) -> Step:
    grads = (Factor(1.0),) + (None,) * max(len(ins) - 1, 0)
    if measured is not None:
        m = measured.forward
        return Step(m.second, m.mean, grads=grads)
    if ins:
        return Step(values=ins[0].values, source=ins[0].source, grads=(Deriv(1.0),) + grads[1:])
    return Step(0.0, 0.0, rule=point(0.0))


def _placed(name: str, ctx: Ctx) -> Est:
    """The estimate of a source made without nodes (:func:`~initlint.gains.unread_gaussian`), given them now:
    the rule its step would have had."""
    e = ctx.ests[name]
    rule = gaussian(e.mean, e.variance)
    ctx.rules[e.source] = rule
    e = ctx.ests[name] = dataclasses.replace(e, values=rule.nodes)
    return e


def _floating(op: Op) -> bool:
    return op.dtype is None or op.dtype.startswith(("float", "bfloat", "complex"))


def _trainable(op: Op) -> bool:
    """Whether the op owns a parameter that takes gradients."""
    w, b = op.weight, op.bias
    return (w is not None and w.trainable) or (b is not None and b.trainable)


def _settle(op: Op, step: Step, ins: list[Est], ctx: Ctx, ests: dict[str, Est], read: bool = True) -> Est:
    """The estimate of ``op``'s output: moments from the grid for elementwise steps, else a new source.
    ``read``: whether a consumer reads the output's values (see :data:`_MOMENTS_ONLY`); a Gaussian source that
    none reads gets no nodes."""
    grads = step.grads + (None,) * (len(ins) - len(step.grads))
    if step.values is not None:
        source, values = step.source, step.values
        rule = ctx.rules[source]
        # An operand whose values these are (a view, a copy) and which took its moments from them: the same
        # moments, without computing them again (a source's own estimate is its transfer's, not its grid's).
        same = next((e for e, name in zip(ins, op.inputs) if e.values is values and e.source == source != name),
                    None)
        if same is not None:
            second, mean = same.second, same.mean
        else:
            m = rule.moments(values)
            second, mean = m.second, m.mean
        slope = sum(_expect_deriv(rule, g.value, values) * e.slope for g, e in zip(grads, ins)
                    if isinstance(g, Deriv))
        if op.kind is OpKind.OUTPUT:  # what the model returns has no consumer whose offsets it could set
            unit = 0.0
        elif same is not None and slope == same.slope:  # what _unit_of gave the operand for the same arguments
            unit = same.unit
        else:
            unit = _unit_of(rule, ests[source], values, slope, max(second - mean * mean, 0.0))
    else:
        source, second, mean, unit, slope = op.name, step.second, step.mean, step.unit, 1.0
        if step.rule is None:
            rule = step.gaussian_rule() if read else unread_gaussian()
        else:  # a grid with its own moments is matched already (to rounding: matched would shift it by 0)
            rule = step.rule if step.own else matched(step.rule, mean, second)
        ctx.rules[source] = rule
        values = rule.nodes
    floating = _floating(op)
    requires = floating and op.kind not in _NO_GRAD and (
        op.kind is OpKind.INPUT or _trainable(op)
        or any(e.requires_grad and g is not None for e, g in zip(ins, grads)))
    # The layout follows the operands: a conv feature map keeps its channels at dim 1 through `x + f(x)` even
    # when the first operand is the model's input, whose layout nothing declared.
    cf = step.channels_first
    if cf is None:
        cf = bool(ins) and (ins[0].channels_first or any(e.channels_first and e.shape == op.shape for e in ins[1:]))
    if math.isnan(second) or math.isnan(mean):
        second = mean = float("nan")
    rows = step.rows if step.rows is not None else _rows(op, ins, second)
    return Est(second, mean, unit, source, values, slope, op.shape, cf, requires, floating, rows)


def _expect_deriv(rule: Rule, value: torch.Tensor | float, values: torch.Tensor) -> float:
    """``E[value]`` on the grid: a constant derivative is its own expectation (the weights sum to one)."""
    if isinstance(value, (int, float)):
        return float(value)
    if value.shape == values.shape and value.dtype == DTYPE:  # an activation's slopes: the same dot product
        return rule.expect(value)
    return rule.expect(torch.as_tensor(value, dtype=DTYPE).expand_as(values))


# From this share of its variance in per-unit offsets, a source's units are told apart by quadrature.
_OFFSET_SHARE = 0.1


def _unit_of(rule: Rule, src: Est, values: torch.Tensor, slope: float, variance: float) -> float:
    """The variance across units of ``h(z)``, a function of a source ``z = c + e`` (``c`` the unit's offset, of
    variance ``u``; ``e`` within the unit), whose variance is ``variance``. Small offsets pass by the slope,
    ``slope^2 u``. Where offsets are a large share of the source (a conv after a sigmoid: each channel nearly a
    constant), the slope at the centre says nothing of ``h`` at each offset: the variance within units,
    ``E_c[Var_e h(c + e)]``, is integrated on the grid and the rest is the units'."""
    u, var = min(src.unit, src.variance), src.variance
    if not rule.gaussian or u <= _OFFSET_SHARE * var or var <= 0:
        return min(slope * slope * src.unit, variance)
    within, offset = compressed_gaussian(0.0, var - u, 48), compressed_gaussian(src.mean, u, 48)
    z = offset.nodes[:, None] + within.nodes[None, :]
    h = interpolate(z.view(-1), rule.nodes, values, rule.spaced).view(z.shape)
    mean = torch.mv(h, within.weights)
    spread = torch.mv(h.mul_(h), within.weights).sub_(mean.mul_(mean)).clamp_(min=0.0)
    return min(max(variance - float(torch.dot(offset.weights, spread)), 0.0), variance)


def _rows(op: Op, ins: list[Est], second: float):
    """Rows of different scale stay different through ops that act row by row; a norm over units and
    attention (rows: queries) make them alike but keep them apart, since gradients may still differ by row;
    pooling and the rest mix them."""
    if not ins or second <= 0:
        return None
    if (op.kind is OpKind.ATTENTION or (op.kind is OpKind.NORM and op.params.kind is not NormKind.BATCH)) \
            and ins[0].rows:
        return tuple((f, second) for f, _ in ins[0].rows)
    if op.kind not in ROWWISE or op.kind is OpKind.CONCAT:
        return None
    shaped = [e for e in ins if e.rows]
    if not shaped or len({tuple(f for f, _ in e.rows) for e in shaped}) != 1:
        return None
    fractions = [f for f, _ in shaped[0].rows]
    parts = [sum(e.rows[i][1] if e.rows else e.second for e in ins) for i in range(len(fractions))]
    total = sum(f * p for f, p in zip(fractions, parts))
    if total <= 0:
        return None
    return tuple((f, p * second / total) for f, p in zip(fractions, parts))


def _causal(graph: ModelGraph, model: nn.Module | None) -> frozenset[str]:
    """Attention ops given a mask tensor whose module declares ``is_causal`` (Hugging Face attention)."""
    if model is None:
        return frozenset()
    found = set()
    for op in graph.of_kind(OpKind.ATTENTION):
        if op.params is None or op.params.causal or not op.params.has_mask:
            continue
        try:
            module = model.get_submodule(op.module) if op.module else model
        except AttributeError:
            continue
        if getattr(module, "is_causal", False) is True:
            found.add(op.name)
    return frozenset(found)


def _input_tensors(graph: ModelGraph, inputs: Any) -> dict[str, torch.Tensor]:
    """Example input tensors matched to INPUT ops, in order, by shape and dtype."""
    if inputs is None:
        return {}
    from .inputs import coerce

    ex = coerce(inputs)
    pool = [t for t in _flat(list(ex.args) + list(ex.kwargs.values()))]
    found: dict[str, torch.Tensor] = {}
    for op in graph.of_kind(OpKind.INPUT):
        for j, t in enumerate(pool):
            if tuple(t.shape) == tuple(op.shape or ()) and str(t.dtype).removeprefix("torch.") == op.dtype:
                found[op.name] = pool.pop(j)
                break
    return found


def _flat(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flat(v)]
    return []


__all__ = ["propagate", "predict", "Prediction", "TABLE"]
