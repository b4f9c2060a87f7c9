"""The non-inverted-dropout probe (IL206): the train-mode factor a random keep-mask (with the scales after it)
applies, measured per element, and the train/eval mismatch it implies.

The shared pass keeps the data going into the mask and the masked, rescaled values coming out. Where the data
is nonzero their ratio is the mask times its scale, element by element: its mean is the factor on the mean
(and ``1/factor`` the eval/train ratio, since in eval the mask is gone), whatever the data's own mean, and its
standard error says how far one mask draw can be trusted.
"""

from __future__ import annotations

import math

from ..findings import Finding, ProbeStatus
from ..graph import ModelGraph
from ..ops import Op, OpKind, RandomDist
from .records import Context, Edit, Measurement, Needs, ScaleAfter, Tap, Unrepairable, finding_op, finite
from .runner import keep_all

# IL206: the train-mode factor on the mean through the mask, estimated per element (out / data where the data
# is nonzero: the mask times its scale) with its standard error. The finding is confirmed when the factor is
# more than 2% (IL206's TOLERANCE) plus two standard errors from 1, not reproduced when it is within that of 1.
# One mask draw over n elements spreads by sqrt(q(1 - q)/n): 3% at n = 256, q = 1/2.
TOLERANCE = 0.02
STANDARD_ERRORS = 2.0
MIN_ELEMENTS = 30  # fewer nonzero elements than this: inconclusive


def _is_mask(graph: ModelGraph, name: str) -> bool:
    op = graph.op(name)
    while op.kind in (OpKind.PASSTHROUGH, OpKind.SCALE, OpKind.COMPARE) and op.inputs:
        op = graph.op(op.inputs[0])
    return op.kind is OpKind.RANDOM and op.params is not None and op.params.dist in (
        RandomDist.UNIFORM, RandomDist.BERNOULLI)


def dropout_operands(graph: ModelGraph, op: Op) -> tuple[str, str]:
    """(the data operand, the mask operand) of a masking product."""
    if op.kind is not OpKind.MUL or len(op.inputs) != 2:
        raise Unrepairable(f"`{op.name}` is not a product with a mask")
    a, b = op.inputs
    if _is_mask(graph, b):
        return a, b
    if _is_mask(graph, a):
        return b, a
    raise Unrepairable(f"no operand of `{op.name}` is a random mask")


def _rescaled(graph: ModelGraph, op: Op) -> Op:
    """``op``'s output after the constant scales applied to it before anything else uses it (``x * m / q``)."""
    while True:
        users = graph.consumers(op)
        if len(users) != 1 or users[0].kind not in (OpKind.SCALE, OpKind.PASSTHROUGH):
            return op
        nxt = users[0]
        if nxt.kind is OpKind.SCALE and (nxt.params is None or nxt.params.shift != 0.0 or nxt.params.param):
            return op
        op = nxt


def dropout_needs(graph: ModelGraph, finding: Finding) -> Needs:
    op = finding_op(graph, finding)
    data, _ = dropout_operands(graph, op)
    out = _rescaled(graph, op).name
    return Needs.of(taps=[Tap(data, "values", keep_all), Tap(out, "values", keep_all)])


def dropout_measure(ctx: Context, finding: Finding) -> Measurement:
    op = finding_op(ctx.graph, finding)
    data, _ = dropout_operands(ctx.graph, op)
    x, y = ctx.tap(data, "values"), ctx.tap(_rescaled(ctx.graph, op).name, "values")
    if x is None or y is None or x.shape != y.shape:
        return ctx.missing(f"the values through `{op.module or op.name}`")
    x, y = x.double().reshape(-1), y.double().reshape(-1)
    live = x != 0
    n = int(live.sum())
    if n < MIN_ELEMENTS:
        return ctx.missing(f"enough nonzero values into `{op.module or op.name}` ({n})")
    kept = y[live] / x[live]  # the mask times its scale, per element
    mean_factor = float(kept.mean())
    se = float(kept.std(correction=1)) / math.sqrt(n)
    second_factor = float((y * y).sum() / (x * x).sum())
    numbers = {"train_mean_factor": mean_factor, "train_second_moment_factor": second_factor,
               "eval_over_train": 1.0 / mean_factor if mean_factor else math.inf, "standard_error": se,
               "elements": float(n)}
    off = abs(mean_factor - 1.0) - STANDARD_ERRORS * se
    status = ProbeStatus.CONFIRMED if off > TOLERANCE else ProbeStatus.NOT_REPRODUCED
    return Measurement(numbers, status)


def dropout_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    mean = finding.predicted.get("train_mean_factor")
    if not finite(mean) or not mean > 0:
        raise Unrepairable("the keep probability is not known")
    return (ScaleAfter(finding_op(graph, finding).name, 1.0 / mean),)


__all__ = ["dropout_needs", "dropout_measure", "dropout_repair", "dropout_operands"]
