"""The cloned-layers probe (IL107): the measured correlation between the blocks' contributions to the residual
stream.

A block's contributions are the branch operands of its residual adds, what it adds to the stream. Copies of
one layer compute the same function of nearly the same stream, so the contributions of consecutive copies
point the same way; independently initialized blocks give nearly orthogonal ones. The probe averages the
cosine similarity of same-position branches of consecutive cloned blocks, over the first sample.
"""

from __future__ import annotations

import torch
from torch import nn

from ..findings import Finding, ProbeStatus
from ..graph import ModelGraph
from ..ops import OpKind
from ..patterns import Block, relative, repeated_blocks, residual
from . import repairs
from .records import Context, Edit, Measurement, Needs, Tap, Unrepairable, judge
from .runner import keep

# Clones confirmed from a mean cosine of 0.5 between consecutive blocks' contributions: independent random
# blocks measure within 0.1 of 0 (the spread of a cosine over a few thousand elements and random weights),
# deep copies 0.9 and more (nn.TransformerEncoder, 4 to 6 layers, Pre-LN and Post-LN, at init).
CORRELATED = 0.5
_WEIGHTED = frozenset({OpKind.LINEAR, OpKind.CONV, OpKind.EMBEDDING, OpKind.RECURRENT})


def _random_weights(block: Block) -> dict:
    out = {}
    for op in block.ops:
        w = op.weight
        if op.kind in _WEIGHTED and w is not None and w.tensor is not None and not w.constant:
            out.setdefault(relative(w.name, block.path), w.tensor)
    return out


def clone_blocks(graph: ModelGraph, finding: Finding) -> list[Block]:
    """The blocks of the finding's group whose random weights equal its first block's (as captured); the whole
    group when none do (a finding forced onto independent blocks is measured on them all)."""
    op = graph.op(finding.op)
    for group in repeated_blocks(graph):
        first = next((b for b in group.blocks if op.module == b.path or op.module.startswith(b.path + ".")), None)
        if first is None:
            continue
        mine = _random_weights(first)
        same = [b for b in group.blocks if b is first or _same(mine, _random_weights(b))]
        return same if len(same) >= 2 else list(group.blocks)
    raise Unrepairable("the cloned blocks are not found in the graph")


def _same(a: dict, b: dict) -> bool:
    names = set(a) & set(b)
    return bool(names) and all(a[n].shape == b[n].shape and torch.equal(a[n], b[n]) for n in names)


def _branches(graph: ModelGraph, block: Block) -> list[str]:
    names = {o.name for o in block.ops}
    out = []
    for op in block.ops:
        res = residual(graph, op) if op.kind is OpKind.ADD else None
        if res is not None and res.branch.name in names:
            out.append(res.branch.name)
    return out


def clone_needs(graph: ModelGraph, finding: Finding) -> Needs:
    blocks = clone_blocks(graph, finding)
    return Needs.of(taps=[Tap(n, "values", keep) for b in blocks for n in _branches(graph, b)])


def clone_measure(ctx: Context, finding: Finding) -> Measurement:
    blocks = clone_blocks(ctx.graph, finding)
    branches = [_branches(ctx.graph, b) for b in blocks]
    if not any(branches):
        return Measurement({"blocks": float(len(blocks))}, ProbeStatus.INCONCLUSIVE,
                           "the cloned blocks hold no residual add, so they contribute to no residual stream: the "
                           "correlated contributions the finding states have nothing to be measured on (chained "
                           "copies without a residual measured no different from independent blocks)")
    if not all(branches) or len({len(b) for b in branches}) != 1:
        return ctx.missing("a residual branch in each cloned block")
    cosines = []
    for a, b in zip(branches, branches[1:]):
        for x, y in zip(a, b):
            u, v = ctx.tap(x, "values"), ctx.tap(y, "values")
            if u is None or v is None or u.shape != v.shape:
                return ctx.missing("the blocks' contributions")
            u, v = u.double(), v.double()
            norm = float(u.norm() * v.norm())
            if norm > 0:
                cosines.append(float(u @ v) / norm)
    if not cosines:
        return ctx.missing("a nonzero contribution")
    mean = sum(cosines) / len(cosines)
    numbers = {"contribution_correlation": mean, "blocks": float(len(blocks)), "pairs": float(len(cosines))}
    return Measurement(numbers, judge(mean, CORRELATED))


def clone_repair(model: nn.Module, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    """Re-draw every copy's weights, as the fix prints (``reset_parameters``), seeded per block."""
    blocks = clone_blocks(graph, finding)
    for i, block in enumerate(blocks):
        module = repairs.submodule(model, block.path)
        repairs.own(model, module)  # reset_parameters writes in place
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(repairs.REPAIR_SEED + i)
            for m in module.modules():
                if isinstance(m, nn.MultiheadAttention):
                    m._reset_parameters()
                elif m is not module and hasattr(m, "reset_parameters") and not isinstance(m, nn.MultiheadAttention):
                    m.reset_parameters()
    return ()


__all__ = ["clone_needs", "clone_measure", "clone_repair", "clone_blocks", "CORRELATED"]
