"""IL302 saturated-activation."""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from initlint.findings import Fix, Issue, Severity
from initlint.gains import DTYPE, activation_with_derivative, gaussian
from initlint.graph import ModelGraph
from initlint.ops import Activation, ActivationParams, Op, OpKind
from initlint.patterns import next_stops, sig
from initlint.registry import rule

# A unit is saturated where the activation's slope is below this fraction of its peak: tanh beyond |x| = 1.82,
# sigmoid beyond 3.63, hardtanh and hardsigmoid outside their linear segment, ReLU6 above 6.
SLOPE = 0.1
# A warning when half the units or more are saturated, an error from 90%. Tanh after the standard init for it
# (gain 5/3: pre-activation variance settles at 1.18 in a deep stack) has 9% saturated; a pre-activation std of
# 2.7 gives 50% (the slope's second moment is then 0.19 of its peak), of 14.5, 90% (0.037: the unit is a sign
# function with a gradient 27x weaker). Sigmoid reaches the same fractions at 2x those stds.
WARN_FRACTION = 0.5
ERROR_FRACTION = 0.9
_BOUNDED = frozenset({Activation.TANH, Activation.SIGMOID, Activation.HARDTANH, Activation.HARDSIGMOID,
                      Activation.SOFTSIGN, Activation.RELU6})
# What a gate's output passes through to the product it gates, and what a pre-activation is computed by
# elementwise from its source (GELU written with tanh: x * (1 + tanh(c (x + 0.044715 x^3))) / 2).
_TO_GATE = frozenset({OpKind.SCALE, OpKind.PASSTHROUGH, OpKind.MATH})
_ELEMENTWISE = frozenset({OpKind.SCALE, OpKind.MATH, OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.ACTIVATION})
_LAYER_TAIL = frozenset({OpKind.PASSTHROUGH, OpKind.DROPOUT})
# Inputs whose second moment is under this share of WARN_FRACTION times the unsaturated radius squared have under
# WARN_FRACTION of the grid's weight beyond the radius (Markov's bound, with room for the grid's rounding).
_CALM = 0.8


@rule("IL302", "saturated-activation", applies_to={OpKind.ACTIVATION}, severity=Severity.WARNING,
      needs_signals=True)
def saturated_activation(op: Op, graph: ModelGraph) -> Issue | None:
    """
    ## What it does
    Finds tanh, sigmoid, hardtanh, hardsigmoid, softsign and ReLU6 units whose predicted input puts half of
    them or more in saturation at init, where the slope is below 10% of its peak (tanh beyond |x| = 1.82,
    sigmoid beyond 3.63, hardtanh outside [-1, 1], ReLU6 above 6).

    The fraction is computed for the Gaussian input the variance engine predicts (its mean included, so a
    sigmoid gate pushed to one side by a large bias counts). Smooth gates of their own input are not
    checked: the tanh inside GPT-2's GELU (`x * (1 + tanh(...)) / 2`), a hand-written SiLU `x * sigmoid(x)` or
    Mish saturate by design, into the identity.

    ## Why is this bad?
    A saturated unit passes almost no gradient: its slope is near 0, so the weights feeding it do not learn,
    and its output is a near-constant +-1 (or 0 and 1), which carries one bit. The engine's figure for the
    gradient loss is the second moment of the slope relative to its peak, `E[f'(x)^2] / max f'^2`: 0.46 for
    tanh at input std 1, 0.19 at std 2.7 (50% saturated), 0.037 at std 14.5 (90%, an `error`: the unit is
    a sign function). Sigmoid reaches the same fractions at twice those stds (5.4 and 29).

    Tanh after its standard init (Xavier or LeCun with `calculate_gain("tanh")` = 5/3) settles at a
    pre-activation variance of 1.18 in a deep stack (std 1.09), 9% saturated; the threshold, 50%, is reached
    at 2.5x that std. Measured on the Example (20,000 inputs): input std 3.98 (predicted 4.02), 64% of units
    beyond |x| = 1.82 (predicted 66%), slope second moment 0.134 (predicted 0.131). A hardtanh at unit input std has 32% saturated: under the threshold. Not normalization-aware: a
    norm after the activation restores the scale but not the gradient lost in it.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10))
    nn.init.normal_(model[0].weight, std=0.5)  # pre-activation std 0.5 * sqrt(64) = 4: 65% saturated
    example_inputs = torch.randn(32, 64)
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10))
    nn.init.xavier_normal_(model[0].weight, gain=nn.init.calculate_gain("tanh"))
    example_inputs = torch.randn(32, 64)
    ```

    ## References
    - Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward neural networks"
      (saturation of sigmoid and tanh layers at init)
    - LeCun, Bottou, Orr & Muller 1998, "Efficient BackProp" (keep tanh inputs in the linear range)
    - Schoenholz et al. 2017, "Deep Information Propagation" (the tanh fixed point and the edge of chaos)
    """
    p = op.params
    if not isinstance(p, ActivationParams) or p.fn not in _BOUNDED or not op.inputs:
        return None
    x = graph.signal(op.inputs[0])
    if x is None or not math.isfinite(x.forward.second):
        return None
    mean, std = x.forward.mean, math.sqrt(x.forward.variance)
    # No unit inside the radius is saturated: when the nodes beyond it weigh under half, so do the saturated
    # ones (a subset of them), and the activation's shape and slopes need not be computed. The grid's weight
    # beyond the radius is at most its second moment over the radius squared (Markov; the grid's second moment
    # is mean^2 + std^2 to 1e-13): under 0.4 of it, half is out of reach without building the grid.
    radius = _unsaturated_radius(p)
    if radius > 0 and mean * mean + std * std < _CALM * WARN_FRACTION * radius * radius:
        return None
    if _self_gated(graph, op):
        return None
    rule_ = gaussian(mean, std * std)
    if radius > 0 and rule_.expect((rule_.nodes.abs() >= radius).to(DTYPE)) < WARN_FRACTION - 1e-9:
        return None
    peak, knee = _shape(p)
    _, slope = activation_with_derivative(p, rule_.nodes, bit_exact=True)
    saturated = slope.abs() < SLOPE * peak
    if p.fn is Activation.RELU6:
        saturated &= rule_.nodes > 0  # below 0 it is ReLU's dead half, not saturation
    fraction = rule_.expect(saturated.to(DTYPE))
    if fraction < WARN_FRACTION:
        return None
    gradient = rule_.second(slope) / peak**2

    name = op.module or op.name
    shift = f", mean {sig(mean)}" if abs(mean) > 0.1 * std else ""
    message = (f"`{name}` ({p.fn.value}) has predicted input std {sig(std)}{shift}: {sig(100 * fraction, 2)}% of "
               f"its units are saturated (slope below {SLOPE:g} of its peak, |x| > {sig(knee)}), and the gradient's "
               f"second moment through it is {sig(gradient, 2)}x what it is in the linear range")
    target = knee / 2.0
    return Issue(
        message=message,
        fix=_fix(graph, op, x, target, std, mean),
        predicted={"saturated_fraction": fraction, "input_std": std, "input_mean": mean,
                   "gradient_factor": gradient, "knee": knee, "target_input_std": target},
        severity=Severity.ERROR if fraction >= ERROR_FRACTION else None,
    )


def _fix(graph: ModelGraph, op: Op, x, target: float, std: float, mean: float) -> Fix:
    layers = [s for s in _producers(graph, op) if s.weight is not None and s.weight.tensor is not None]
    if len(layers) != 1:
        factor = target / math.hypot(std, mean)
        return Fix(summary=f"Scale the input of `{op.module or op.name}` by {sig(factor)} (to std {sig(target)}), "
                           f"or normalize it",
                   code=f"x = x * {sig(factor)}  # before the {op.params.fn.value}")
    layer = layers[0]
    w, b = layer.weight, layer.bias
    bias_var = b.second_moment if b is not None else 0.0
    weight_part = max(x.forward.second - bias_var, 1e-30)
    new_std = w.rms * target / math.sqrt(weight_part)
    code = f'nn.init.normal_(model.get_parameter("{w.name}"), mean=0.0, std={sig(new_std)})'
    if b is not None and bias_var > 0.25 * target**2:
        code += f'\nnn.init.zeros_(model.get_parameter("{b.name}"))'
    return Fix(summary=f"Re-initialize `{w.name}` with std {sig(new_std)}, which puts the input std at {sig(target)} "
                       f"(5% saturated)", code=code)


def _producers(graph: ModelGraph, op: Op) -> list[Op]:
    """The weight layer computing the activation's input, through reshapes and dropout."""
    cur = graph.op(op.inputs[0])
    while cur.kind in _LAYER_TAIL and cur.inputs:
        cur = graph.op(cur.inputs[0])
    return [cur] if cur.kind in (OpKind.LINEAR, OpKind.CONV) else []


def _unsaturated_radius(p: ActivationParams) -> float:
    """A radius r with no saturated unit at |x| < r, for any peak the lattice gives (at most the slope's
    supremum): tanh's slope 1 - tanh^2 is 0.1035 at 1.8 (its knee is 1.8185), sigmoid's 0.0259 of 0.25 at 3.6
    (knee 3.637), softsign's 1 / (1 + |x|)^2 0.1008 at 2.15 (knee 2.162); the hard ones are linear up to their
    corners (ReLU6: below 0 is not saturation). 0 where there is no such radius. Checked against the lattice's
    knees and the rule's own slopes in the tests."""
    if p.fn is Activation.TANH:
        return 1.8
    if p.fn is Activation.SIGMOID:
        return 3.6
    if p.fn is Activation.SOFTSIGN:
        return 2.15
    if p.fn is Activation.HARDSIGMOID:
        return 3.0
    if p.fn is Activation.RELU6:
        return 6.0
    if p.fn is Activation.HARDTANH:
        low = -1.0 if p.min_val is None else p.min_val
        high = 1.0 if p.max_val is None else p.max_val
        return min(-low, high) if low < 0 < high else 0.0
    return 0.0


# Activations whose slope is largest at or next to 0 (tanh and sigmoid peak at 0; ReLU's family is 0 or 1):
# their knee is searched outward from 0, a unit of |x| at a time, instead of over the whole lattice.
_CENTRED = frozenset({Activation.TANH, Activation.SIGMOID, Activation.RELU, Activation.RELU6, Activation.IDENTITY})
_CHUNK = 2000  # lattice points per unit of |x|


@lru_cache(maxsize=64)
def _shape(p: ActivationParams) -> tuple[float, float]:
    """The peak slope and the smallest |x| (above 0 for ReLU6) where the slope falls below SLOPE of it, on the
    lattice of 160,001 points over [-40, 40]."""
    x = torch.linspace(-40.0, 40.0, 160001, dtype=DTYPE)
    if p.fn in _CENTRED:
        return _shape_from_centre(p, x)
    _, d = activation_with_derivative(p, x)  # closed-form slopes where there are: the same peak and knee
    peak = float(d.abs().max())
    low = _low(p, x, d, peak)
    knee = float(x[low].abs().min()) if bool(low.any()) else math.inf
    return peak, knee


def _low(p: ActivationParams, x: torch.Tensor, d: torch.Tensor, peak: float) -> torch.Tensor:
    low = d.abs() < SLOPE * peak
    return low & (x > 0) if p.fn is Activation.RELU6 else low


def _shape_from_centre(p: ActivationParams, x: torch.Tensor) -> tuple[float, float]:
    """:func:`_shape` for :data:`_CENTRED` activations: the same numbers (the slopes are elementwise closed forms,
    so a point's slope does not depend on which others are computed with it), from the few units of |x| around 0
    that hold the knee. A tenth of a millisecond where the whole lattice took 5 (tanh)."""
    mid = x.numel() // 2  # x[mid] == 0
    peak = float(activation_with_derivative(p, x[mid - 1:mid + 2])[1].abs().max())
    c = 0
    while c <= mid // _CHUNK:  # |x| in [c, c + w): w = 1, 1, 2, 4, 8... units, so 6 (ReLU6's knee) in 4 steps, not 7
        end = c + max(c, 1)  # the first span with a low point holds the smallest |x| of all: spans only widen it
        lo, hi = max(mid - end * _CHUNK, 0), mid - c * _CHUNK  # on the left...
        part = torch.cat([x[lo:hi], x[mid + c * _CHUNK:min(mid + end * _CHUNK, x.numel())]])  # ...and right
        low = _low(p, part, activation_with_derivative(p, part)[1], peak)
        if bool(low.any()):
            return peak, float(part[low].abs().min())
        c = end
    return peak, math.inf


def _self_gated(graph: ModelGraph, op: Op) -> bool:
    """Whether the activation's output multiplies a function of its own input (GELU, SiLU, Mish written out)."""
    mine = _roots(graph, op.inputs[0])
    for stop in next_stops(graph, op, _TO_GATE):
        if stop.kind is OpKind.MUL:
            others = [n for n in stop.inputs if n not in _walk(graph, op)]
            if any(_roots(graph, n) & mine for n in others):
                return True
    return False


def _walk(graph: ModelGraph, op: Op) -> set[str]:
    """``op`` and what carries its output to the product it gates."""
    seen, stack = {op.name}, [op]
    while stack:
        for nxt in graph.consumers(stack.pop()):
            if nxt.kind in _TO_GATE and nxt.name not in seen:
                seen.add(nxt.name)
                stack.append(nxt)
    return seen


def _roots(graph: ModelGraph, name: str) -> set[str]:
    """``name`` and the tensors it is computed from elementwise."""
    seen, stack = set(), [name]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if graph.op(n).kind in _ELEMENTWISE:
            stack.extend(graph.op(n).inputs)
    return {n for n in seen if graph.op(n).kind not in (OpKind.PARAM, OpKind.FACTORY)}
