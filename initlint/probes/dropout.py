"""The non-inverted-dropout probe (IL206): the train-mode factor a random keep-mask (with the scales after it)
applies, measured per element, and the train/eval mismatch it implies.

The shared pass keeps the data going into the mask and the masked, rescaled values coming out. Where the data
is nonzero their ratio is the mask times its scale, element by element: its mean is the factor on the mean
(and ``1/factor`` the eval/train ratio, since in eval the mask is gone), whatever the data's own mean.

One pass is one mask draw, and a mask can hold few independent draws: a hand-written drop-path draws one keep
per sample (8 on a batch of 8) and broadcasts it over thousands of elements. The probe counts the independent
draws (the mask's own elements, or the nonzero data elements if fewer) and, below ``DRAWS`` of them, runs the
pass again with the next seeds (up to ``MAX_PASSES`` passes in all, every mask of the model tapped at once) and
pools the draws. The standard error is the ratios' spread over the square root of the independent draws,
not of the elements.
"""

from __future__ import annotations

import math
import weakref

import torch

from ..findings import Finding, ProbeStatus
from ..graph import ModelGraph
from ..ops import Op, OpKind, RandomDist
from .records import Context, Edit, Measurement, Needs, ScaleAfter, Tap, Unrepairable, finding_op, finite
from .runner import keep_all, run_pass

# IL206: the train-mode factor on the mean through the mask, estimated per element (out / data where the data
# is nonzero: the mask times its scale) with its standard error. The finding is confirmed when the factor is
# more than 2% (IL206's TOLERANCE) plus two standard errors from 1, not reproduced when it is within that of 1.
# One mask draw over n elements spreads by sqrt(q(1 - q)/n): 3% at n = 256, q = 1/2.
TOLERANCE = 0.02
STANDARD_ERRORS = 2.0
MIN_ELEMENTS = 30  # fewer nonzero elements than this: inconclusive
# Independent mask draws the probe pools before judging: 1024 put two standard errors at 3% for q = 1/2, and at
# 2.5% for drop-path's usual q = 0.8. Extra passes (seeds ``seed + 1, seed + 2, ...``) stop at MAX_PASSES in all.
DRAWS = 1024
MAX_PASSES = 32


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


def _numel(t: torch.Tensor) -> int:
    return int(t.numel())


def _taps(graph: ModelGraph, op: Op) -> list[Tap]:
    data, mask = dropout_operands(graph, op)
    out = _rescaled(graph, op).name
    return [Tap(data, "values", keep_all), Tap(out, "values", keep_all), Tap(mask, "draws", _numel)]


def dropout_needs(graph: ModelGraph, finding: Finding) -> Needs:
    return Needs.of(taps=_taps(graph, finding_op(graph, finding)))


def _every_mask(graph: ModelGraph) -> Needs:
    """The taps of every masking product of the graph: the extra passes serve all of a model's findings."""
    taps = []
    for op in graph.of_kind(OpKind.MUL):
        try:
            taps += _taps(graph, op)
        except Unrepairable:
            continue
    return Needs.of(taps=taps)


# The extra passes of one shared pass (keyed by its evidence, dropped with it), reused by every finding it serves.
_EXTRA: dict[int, list] = {}


def _extra_passes(ctx: Context, passes: int) -> list:
    """The taps of ``passes - 1`` more passes of the context's model, seeds ``seed + 1`` on."""
    key = id(ctx.evidence)
    if key not in _EXTRA:
        _EXTRA[key] = []
        weakref.finalize(ctx.evidence, _EXTRA.pop, key, None)
    cache = _EXTRA[key]
    if len(cache) < passes - 1:
        needs = _every_mask(ctx.graph)
        for k in range(len(cache) + 1, passes):
            cache.append(run_pass(ctx.runnable, needs, ctx.device, ctx.seed + k).taps)
    return cache[: passes - 1]


def _ratios(x, y) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The mask times its scale where the data is nonzero, and the data's squares with the output's."""
    if x is None or y is None or x.shape != y.shape:
        return None, None
    x, y = x.double().reshape(-1), y.double().reshape(-1)
    live = x != 0
    return y[live] / x[live], torch.stack([(x * x).sum(), (y * y).sum()])


def dropout_measure(ctx: Context, finding: Finding) -> Measurement:
    op = finding_op(ctx.graph, finding)
    data, mask = dropout_operands(ctx.graph, op)
    out = _rescaled(ctx.graph, op).name
    kept, squares = _ratios(ctx.tap(data, "values"), ctx.tap(out, "values"))
    if kept is None:
        return ctx.missing(f"the values through `{op.module or op.name}`")
    n = kept.numel()
    if n < MIN_ELEMENTS:
        return ctx.missing(f"enough nonzero values into `{op.module or op.name}` ({n})")
    per_pass = max(1, min(n, int(ctx.tap(mask, "draws") or n)))  # independent draws in one pass
    passes = 1 if ctx.runnable is None else min(MAX_PASSES, math.ceil(DRAWS / per_pass))
    all_kept, draws = [kept], per_pass
    if passes > 1:
        for taps in _extra_passes(ctx, passes):
            more, sq = _ratios(taps.get((data, "values")), taps.get((out, "values")))
            if more is None or not more.numel():
                continue
            all_kept.append(more)
            squares = squares + sq
            draws += max(1, min(more.numel(), int(taps.get((mask, "draws")) or more.numel())))
    kept = torch.cat(all_kept)
    mean_factor = float(kept.mean())
    se = float(kept.std(correction=1)) / math.sqrt(draws)
    second_factor = float(squares[1] / squares[0]) if squares[0] > 0 else math.nan
    numbers = {"train_mean_factor": mean_factor, "train_second_moment_factor": second_factor,
               "eval_over_train": 1.0 / mean_factor if mean_factor else math.inf, "standard_error": se,
               "elements": float(kept.numel()), "mask_draws": float(draws), "passes": float(len(all_kept))}
    off = abs(mean_factor - 1.0) - STANDARD_ERRORS * se
    status = ProbeStatus.CONFIRMED if off > TOLERANCE else ProbeStatus.NOT_REPRODUCED
    detail = (f"mask times scale x{mean_factor:.3g} +- {se:.2g} over {draws} mask draws"
              f"{f' ({len(all_kept)} passes)' if len(all_kept) > 1 else ''}")
    return Measurement(numbers, status, detail)


def dropout_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    mean = finding.predicted.get("train_mean_factor")
    if not finite(mean) or not mean > 0:
        raise Unrepairable("the keep probability is not known")
    return (ScaleAfter(finding_op(graph, finding).name, 1.0 / mean),)


__all__ = ["dropout_needs", "dropout_measure", "dropout_repair", "dropout_operands"]
