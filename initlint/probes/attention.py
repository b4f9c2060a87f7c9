"""The attention-logit probe (IL205): measured logit std and mean softmax entropy against ln(n).

Hand-written attention is read at its softmax: the softmax's input gives the logits' std (over finite entries,
so masks drop out) and its output the entropy of each query's weights. For the fused
``F.scaled_dot_product_attention`` the logits never exist as a tensor: the shared pass keeps the first
sample's queries and keys and the probe forms ``q k^T * scale`` from them, with the causal mask when the call
has one.
"""

from __future__ import annotations

import math

import torch

from ..findings import Finding
from ..graph import ModelGraph
from ..ops import AttentionParams, Op, OpKind, SoftmaxParams
from . import repairs
from .records import (
    Context, Edit, Measurement, Needs, ScaleAfter, SetArgument, Tap, Unrepairable, finding_op, finite, judge,
)

# A logit std of 3 or more, IL205's WARN_STD: three times what 1/sqrt(d_k) aims at, above the 1.78 of the
# healthy Xavier case.
LOGIT_STD = 3.0
TARGET_VARIANCE = 1.0  # what the rescaled projections aim at (IL205's TARGET_VARIANCE)
SCALE_TOLERANCE = 0.05  # a scale within 5% of 1/sqrt(d_k) is that scale (IL205's)
_BACK = frozenset({OpKind.PASSTHROUGH, OpKind.SCALE, OpKind.ADD, OpKind.SUB, OpKind.WHERE, OpKind.DROPOUT})


def _first_sample(t: torch.Tensor) -> torch.Tensor:
    return t.detach()[:1].float().cpu()


def _logit_stats(t: torch.Tensor) -> torch.Tensor:
    x = t.detach().float()
    x = x[torch.isfinite(x)]
    return torch.stack([x.std(correction=0) if x.numel() else torch.tensor(math.nan), torch.tensor(float(t.shape[-1]))]).cpu()


def _entropy(dim: int):
    def reduce(p: torch.Tensor) -> torch.Tensor:
        p = p.detach().float()
        h = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=dim)
        return h.mean().cpu()

    return reduce


def attention_needs(graph: ModelGraph, finding: Finding) -> Needs:
    op = finding_op(graph, finding)
    if op.kind is OpKind.ATTENTION:
        return Needs.of(taps=[Tap(op.inputs[0], "q", _first_sample), Tap(op.inputs[1], "k", _first_sample)])
    dim = op.params.dim if isinstance(op.params, SoftmaxParams) else -1
    return Needs.of(taps=[Tap(op.inputs[0], "logits", _logit_stats), Tap(op.name, "entropy", _entropy(dim))])


def attention_measure(ctx: Context, finding: Finding) -> Measurement:
    op = finding_op(ctx.graph, finding)
    if op.kind is OpKind.ATTENTION:
        q, k = ctx.tap(op.inputs[0], "q"), ctx.tap(op.inputs[1], "k")
        p = op.params if isinstance(op.params, AttentionParams) else AttentionParams()
        if q is None or k is None or q.dim() < 2:
            return ctx.missing(f"the queries and keys of `{op.module or op.name}`")
        scale = p.scale
        for edit in getattr(ctx.runnable, "edits", ()):  # a repair that changed the call's scale
            if isinstance(edit, SetArgument) and edit.op == op.name and edit.name == "scale":
                scale = edit.value
        scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        logits = (q.double() @ k.double().transpose(-2, -1)) * scale
        if p.causal:
            n, m = logits.shape[-2:]
            logits = logits.masked_fill(torch.ones(n, m, dtype=torch.bool).triu(1), -math.inf)
        finite_logits = logits[torch.isfinite(logits)]
        std = float(finite_logits.std(correction=0))
        probs = torch.softmax(logits, dim=-1)
        entropy = float(-(probs * torch.log(probs.clamp_min(1e-300))).sum(-1).mean())
        keys = logits.shape[-1]
    else:
        stats, entropy = ctx.tap(op.inputs[0], "logits"), ctx.tap(op.name, "entropy")
        if stats is None or entropy is None:
            return ctx.missing(f"the logits into `{op.module or op.name}`")
        std, keys, entropy = float(stats[0]), int(stats[1]), float(entropy)
    numbers = {"logit_std": std, "entropy": entropy, "ln_keys": math.log(keys), "effective_keys": math.exp(entropy),
               "keys": float(keys)}
    return Measurement(numbers, judge(std, LOGIT_STD))


def _product(graph: ModelGraph, softmax: Op) -> Op | None:
    """The ``q @ k^T`` product feeding a softmax, back through scales, masks and reshapes."""
    frontier, seen = [softmax.inputs[0]], set()
    while frontier:
        op = graph.op(frontier.pop(0))
        if op.kind is OpKind.MATMUL:
            return op
        if op.name in seen or op.kind not in _BACK:
            continue
        seen.add(op.name)
        frontier += [n for n in op.inputs if graph.op(n).kind not in (OpKind.PARAM, OpKind.FACTORY)]
    return None


def _projection(graph: ModelGraph, name: str) -> Op | None:
    op = graph.op(name)
    while op.kind in (OpKind.PASSTHROUGH, OpKind.SCALE) and op.inputs:
        op = graph.op(op.inputs[0])
    return op if op.kind in (OpKind.LINEAR, OpKind.CONV) and op.weight is not None else None


def _operands(graph: ModelGraph, op: Op) -> tuple[str, str] | None:
    if op.kind is OpKind.ATTENTION:
        return op.inputs[0], op.inputs[1]
    product = _product(graph, op)
    return (product.inputs[0], product.inputs[1]) if product is not None and len(product.inputs) == 2 else None


def attention_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    """The printed fix: the missing 1/sqrt(d_k) where that alone suffices, else the query and key projections
    scaled so that the logit variance is 1."""
    op = finding_op(graph, finding)
    pred = finding.predicted
    d, scale, variance = pred.get("head_dim"), pred.get("scale"), pred.get("logit_variance")
    if not finite(variance):
        raise Unrepairable("the finding gives no logit variance")
    scaled = d and finite(scale) and abs(scale * math.sqrt(d) - 1.0) <= SCALE_TOLERANCE
    if d and finite(scale) and scale and not scaled and math.sqrt(variance / (scale * scale * d)) < LOGIT_STD:
        if op.kind is OpKind.ATTENTION:
            return (SetArgument(op.name, "scale", None),)
        product = _product(graph, op)
        if product is None:
            raise Unrepairable("the logits' product is not in the graph")
        return (ScaleAfter(product.name, 1.0 / (scale * math.sqrt(d))),)
    factor = (TARGET_VARIANCE / variance) ** 0.25
    operands = _operands(graph, op)
    layers = [_projection(graph, n) for n in operands] if operands else []
    if len(layers) != 2 or None in layers:
        product = _product(graph, op) if op.kind is not OpKind.ATTENTION else None
        if product is None:
            raise Unrepairable("the query and key projections are not found")
        return (ScaleAfter(product.name, factor * factor),)
    q, k = layers
    if q.name == k.name:  # one packed projection (nn.MultiheadAttention's in_proj): its q and k rows
        rows = slice(0, q.weight.shape[0] // 3 * 2)
        for w in (q.weight, q.bias):
            if w is not None:
                repairs.scale(model, w.name, factor, rows)
        return ()
    for layer in (q, k):
        for w in (layer.weight, layer.bias):
            if w is not None:
                repairs.scale(model, w.name, factor)
    return ()


__all__ = ["attention_needs", "attention_measure", "attention_repair", "LOGIT_STD"]
