"""Probes read from the shared pass's second moments: off-scale weights (IL101), unscaled residual chains
(IL201), unscaled branch sums (IL202), concatenations of mismatched scales (IL203) and signal drift over
layers (IL303).

Each measures the quantity the finding's message states (a layer's forward gain, the stream's growth over a
chain, a sum's factor over its branches...) from the measured second moments, and judges it against a
threshold of its own: the rule's threshold as it was when the probe was written, kept here so that a rule
tuned lower cannot make its own probe agree with it.
"""

from __future__ import annotations

import math

import torch

from ..findings import Finding
from ..graph import ModelGraph
from ..ops import Op, OpKind
from ..patterns import (
    branch_ops, nonlinearity_after, signal_path, stream_end, TRIVIAL,
)
from . import repairs
from .records import (
    Context, Edit, Measurement, Needs, ScaleAfter, Tap, Unrepairable, badness, finding_op, finite, judge, ratio,
)

# IL101: a layer's effective weight second moment (measured forward gain / fan-in) 10x or more outside the
# variance-preserving band, IL101's FACTOR.
OFF_SCALE = 10.0
# IL201: the residual stream's second moment grows 4x or more over the chain (its std doubles), IL201's
# WARN_GROWTH.
GROWTH = 4.0
# IL202: the sum multiplies both its branches' mean second moment and its input's by 1.5 or more, IL202's
# MIN_FACTOR: between a scaled sum (1) and two unscaled zero-mean branches (2).
BRANCH_SUM = 1.5
# IL203: the concatenated inputs' second moments 10x or more apart, IL203's MIN_RATIO; a layer after a concat
# with a forward gain 1.5x or more what its init intends for the concatenated fan-in, IL203's MIN_WIDTH_FACTOR.
CONCAT_RATIO = 10.0
WIDTH_FACTOR = 1.5
# IL303: the forward or backward second moment changes 100x or more over the stretch of layers, IL303's FACTOR.
DRIFT = 100.0
# IL303's fix re-initializes the layers whose weight second moment is more than 1.5x off the variance-preserving
# one (IL303's FIX_OFF).
FIX_OFF = 1.5

_COUNTED = frozenset({OpKind.LINEAR, OpKind.CONV, OpKind.ACTIVATION})
_LAYERS = (OpKind.LINEAR, OpKind.CONV)


# -- IL101 off-scale-weights -------------------------------------------------------------------------------


def off_scale_needs(graph: ModelGraph, finding: Finding) -> Needs:
    op = finding_op(graph, finding)
    return Needs.of(forward_ops=[op.name, *op.inputs[:1]])


def off_scale_measure(ctx: Context, finding: Finding) -> Measurement:
    op = finding_op(ctx.graph, finding)
    gain = ratio(ctx.second(op.name), ctx.second(op.inputs[0] if op.inputs else None))
    w = op.weight
    low, high = finding.predicted.get("band_low"), finding.predicted.get("band_high")
    if gain is None or w is None or not w.fan_in or not finite(low, high):
        return ctx.missing(f"the forward gain of `{op.module or op.name}`")
    effective = gain / w.fan_in
    factor = effective / high if effective > high else low / effective if effective < low else 1.0
    numbers = {"forward_gain": gain, "effective_weight_second_moment": effective, "factor": factor}
    return Measurement(numbers, judge(factor, OFF_SCALE))


def off_scale_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    op = finding_op(graph, finding)
    std = finding.predicted.get("target_std")
    if op.weight is None or not finite(std):
        raise Unrepairable("the finding gives no target std")
    repairs.reinit_normal(model, op.weight.name, std)
    return ()


# -- IL201 unscaled-residual -------------------------------------------------------------------------------




def residual_chain(graph: ModelGraph, first: Op) -> list:
    """The chain of residual adds the rule reported from ``first``, each as a
    :class:`~initlint.patterns.Residual`: the rule's own chains, so that probe and finding agree."""
    from initlint.rules.unscaled_residual import residual_chains

    for chain in residual_chains(graph):
        if chain[0].add.name == first.name:
            return chain
    raise Unrepairable(f"`{first.name}` does not start a chain of residual adds")


def residual_needs(graph: ModelGraph, finding: Finding) -> Needs:
    chain = residual_chain(graph, finding_op(graph, finding))
    return Needs.of(forward_ops=[chain[0].skip.name, stream_end(graph, chain[-1].add).name])


def residual_measure(ctx: Context, finding: Finding) -> Measurement:
    chain = residual_chain(ctx.graph, finding_op(ctx.graph, finding))
    start, end = chain[0].skip.name, stream_end(ctx.graph, chain[-1].add).name
    growth = ratio(ctx.second(end), ctx.second(start))
    if growth is None:
        return ctx.missing("the residual stream")
    numbers = {"growth": growth, "growth_per_add": growth ** (1.0 / len(chain)), "adds": len(chain),
               "stream_second_moment_start": ctx.second(start), "stream_second_moment_end": ctx.second(end)}
    return Measurement(numbers, judge(growth, GROWTH))


def residual_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    """SkipInit (the last weight layer of each branch starts at zero) where every branch has one, else the
    printed scale after each add."""
    chain = residual_chain(graph, finding_op(graph, finding))
    lasts = []
    for res in chain:
        members = branch_ops(graph, res)
        layers = [op for op in graph if op.name in members and op.kind in _LAYERS and op.weight is not None]
        lasts.append(layers[-1] if layers else None)
    if all(lasts):
        for layer in lasts:
            for w in (layer.weight, layer.bias):
                if w is not None:
                    repairs.zero(model, w.name)
        return ()
    scale = finding.predicted.get("sum_scale")
    if not finite(scale):
        raise Unrepairable("the finding gives no sum scale")
    return tuple(ScaleAfter(res.add.name, scale) for res in chain)


# -- IL202 unscaled-branch-sum -----------------------------------------------------------------------------


def _leaves(graph: ModelGraph, op: Op) -> list[Op]:
    if op.kind is OpKind.REDUCE:
        src = graph.op(op.inputs[0])
        while src.kind is OpKind.PASSTHROUGH and len(src.inputs) == 1:
            src = graph.op(src.inputs[0])
        return [graph.op(n) for n in src.inputs] if src.kind is OpKind.CONCAT else []
    leaves = []
    for name in op.inputs:
        child = graph.op(name)
        if child.kind is OpKind.ADD and len(graph.consumers(child)) == 1:
            leaves += _leaves(graph, child)
        else:
            leaves.append(child)
    return leaves


def _strip(graph: ModelGraph, op: Op) -> Op:
    while op.kind in TRIVIAL and len([n for n in op.inputs if graph.op(n).kind is not OpKind.PARAM]) == 1:
        op = graph.op(next(n for n in op.inputs if graph.op(n).kind is not OpKind.PARAM))
    return op



def branch_sum(graph: ModelGraph, op: Op) -> tuple[Op, list[Op], Op]:
    """(the fork the branches start from, the branches' last ops, the sum's output after trivial ops)."""
    branches = [_strip(graph, leaf) for leaf in _leaves(graph, op)]
    if len(branches) < 2:
        raise Unrepairable(f"`{op.name}` is not a sum of branches")
    common = set.intersection(*(graph.ancestors(b) for b in branches))
    order = {name: i for i, name in enumerate(graph.ops)}
    if not common:
        raise Unrepairable(f"the branches summed at `{op.name}` share no input")
    fork = graph.op(max(common, key=order.__getitem__))
    return fork, branches, stream_end(graph, op, TRIVIAL)


def branch_sum_needs(graph: ModelGraph, finding: Finding) -> Needs:
    fork, branches, out = branch_sum(graph, finding_op(graph, finding))
    return Needs.of(forward_ops=[fork.name, out.name, *(b.name for b in branches)])


def branch_sum_measure(ctx: Context, finding: Finding) -> Measurement:
    fork, branches, out = branch_sum(ctx.graph, finding_op(ctx.graph, finding))
    seconds = [ctx.second(b.name) for b in branches]
    if not finite(*seconds) or not finite(ctx.second(out.name)):
        return ctx.missing("the branches' second moments")
    factor = ratio(ctx.second(out.name), sum(seconds) / len(seconds))
    gain = ratio(ctx.second(out.name), ctx.second(fork.name))
    if factor is None or gain is None:
        return ctx.missing("the sum's input")
    numbers = {"factor": factor, "gain": gain, "branches": len(branches),
               "branch_second_moment_mean": sum(seconds) / len(seconds)}
    return Measurement(numbers, judge(min(factor, gain), BRANCH_SUM))


def branch_sum_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    factor = finding.predicted.get("factor")
    if not finite(factor) or not factor > 0:
        raise Unrepairable("the finding gives no factor")
    return (ScaleAfter(finding_op(graph, finding).name, 1.0 / math.sqrt(factor)),)


# -- IL203 concat-scale-mismatch ---------------------------------------------------------------------------


def _width_finding(finding: Finding) -> bool:
    return "forward_gain_factor" in finding.predicted


def _parts(graph: ModelGraph, concat: Op) -> list[Op]:
    return [graph.op(n) for n in dict.fromkeys(concat.inputs)
            if graph.op(n).kind not in (OpKind.PARAM, OpKind.FACTORY)]


def _slices(op: Op):
    """A tap reduction: the second moment of each operand's slice of the concat's output, in operand order (what
    the consumer sees, after any scale a repair inserted on an operand, a model input included)."""
    params = op.params

    def reduce(t: torch.Tensor):
        sizes = list(getattr(params, "sizes", ()) or ())
        dim = getattr(params, "dim", None)
        if dim is None or len(sizes) != len(op.inputs) or not -t.dim() <= dim < t.dim() or sum(sizes) != t.shape[dim]:
            return None
        return [float(c.double().square().mean()) for c in torch.split(t, sizes, dim=dim)]
    return reduce


def concat_needs(graph: ModelGraph, finding: Finding) -> Needs:
    op = finding_op(graph, finding)
    if _width_finding(finding):
        return Needs.of(forward_ops=[op.name, *op.inputs[:1]])
    return Needs.of(forward_ops=[p.name for p in _parts(graph, op)], taps=[Tap(op.name, "slices", _slices(op))])


def concat_measure(ctx: Context, finding: Finding) -> Measurement:
    op = finding_op(ctx.graph, finding)
    if _width_finding(finding):
        gain = ratio(ctx.second(op.name), ctx.second(op.inputs[0]))
        intended = finding.predicted.get("intended_variance")
        if gain is None or op.weight is None or not finite(intended):
            return ctx.missing(f"the forward gain of `{op.module or op.name}`")
        factor = gain / (op.weight.fan_in * intended)
        return Measurement({"forward_gain": gain, "forward_gain_factor": factor}, judge(factor, WIDTH_FACTOR))
    slices = ctx.tap(op.name, "slices")
    if slices is not None:  # each part's slice of the output, the first slice of a part used twice
        first = {name: i for i, name in reversed(list(enumerate(op.inputs)))}
        seconds = [slices[first[p.name]] for p in _parts(ctx.graph, op)]
    else:
        seconds = [ctx.second(p.name) for p in _parts(ctx.graph, op)]
    seconds = [s for s in seconds if s is not None and s > 0.0]
    if len(seconds) < 2:
        return ctx.missing("the concatenated inputs")
    r = max(seconds) / min(seconds)
    numbers = {"second_moment_ratio": r, "weak_second_moment": min(seconds), "strong_second_moment": max(seconds)}
    return Measurement(numbers, judge(r, CONCAT_RATIO))


def concat_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    op = finding_op(graph, finding)
    if _width_finding(finding):
        intended = finding.predicted.get("intended_variance")
        if op.weight is None or not finite(intended):
            raise Unrepairable("the finding gives no intended variance")
        repairs.reinit_normal(model, op.weight.name, math.sqrt(intended))
        return ()
    parts = [p for p in _parts(graph, op) if graph.signal(p) is not None and graph.signal(p).forward.second > 0]
    gain = finding.predicted.get("std_ratio")
    if len(parts) < 2 or not finite(gain):
        raise Unrepairable("the finding gives no scale for the weaker input")
    weak = min(parts, key=lambda p: graph.signal(p).forward.second)
    src = weak
    while src.kind in (OpKind.PASSTHROUGH, OpKind.DROPOUT) and len(src.inputs) == 1:
        src = graph.op(src.inputs[0])
    if src.kind in (OpKind.EMBEDDING, OpKind.LINEAR, OpKind.CONV) and src.weight is not None:
        repairs.scale(model, src.weight.name, gain)
        if src.bias is not None and src.kind is not OpKind.EMBEDDING:
            repairs.scale(model, src.bias.name, gain)
        return ()
    return (ScaleAfter(weak.name, gain),)


# -- IL303 signal-drift ------------------------------------------------------------------------------------


def _head(graph: ModelGraph, op: Op) -> bool:
    from ..patterns import next_stops

    stops = next_stops(graph, op, {OpKind.PASSTHROUGH, OpKind.DROPOUT, OpKind.ACTIVATION})
    return bool(stops) and all(s.kind is OpKind.OUTPUT for s in stops)


def drift_steps(graph: ModelGraph, last: Op) -> list[tuple[Op, Op]]:
    """(input, op) for each weight layer and activation on the stretch ending at ``last``."""
    path = signal_path(graph, last)
    steps = []
    for prev, op in zip(path, path[1:]):
        if op.kind in _LAYERS and _head(graph, op):
            break
        if op.kind in _COUNTED:
            steps.append((prev, op))
    return steps


def drift_needs(graph: ModelGraph, finding: Finding) -> Needs:
    steps = drift_steps(graph, finding_op(graph, finding))
    return Needs.of(ops=[n for prev, op in steps for n in (prev.name, op.name)])


def drift_measure(ctx: Context, finding: Finding) -> Measurement:
    steps = drift_steps(ctx.graph, finding_op(ctx.graph, finding))
    forward = backward = 1.0
    for prev, op in steps:
        f = ratio(ctx.second(op.name), ctx.second(prev.name))
        gin, gout = ctx.backward_second(prev.name), ctx.backward_second(op.name)
        if f is None or gin is None or gout is None or not gout > 0 or not prev.numel or not op.numel:
            return ctx.missing(f"the signal through `{op.module or op.name}`")
        forward *= f
        backward *= (gin * prev.numel) / (gout * op.numel)
    if not steps:
        return ctx.missing("a stretch of layers")
    worst = max(badness(forward) or math.inf, badness(backward) or math.inf)
    numbers = {"forward_factor": forward, "backward_factor": backward,
               "layers": float(sum(1 for _, op in steps if op.kind in _LAYERS))}
    return Measurement(numbers, judge(worst, DRIFT))


def drift_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    layers = [op for _, op in drift_steps(graph, finding_op(graph, finding)) if op.kind in _LAYERS and op.weight is not None]
    done = 0
    for op in layers:
        w = op.weight
        _, g2 = nonlinearity_after(graph, op)
        std = math.sqrt(g2 / w.fan_in) if w.fan_in else None
        if std and w.second_moment > 0 and abs(math.log(w.second_moment / std**2)) > math.log(FIX_OFF):
            repairs.reinit_normal(model, w.name, std)
            done += 1
    if not done:
        raise Unrepairable("no layer of the stretch is off its variance-preserving init")
    return ()


__all__ = ["off_scale_needs", "off_scale_measure", "off_scale_repair", "residual_needs", "residual_measure",
           "residual_repair", "branch_sum_needs", "branch_sum_measure", "branch_sum_repair", "concat_needs",
           "concat_measure", "concat_repair", "drift_needs", "drift_measure", "drift_repair", "residual_chain", "branch_sum"]
