"""The classifier-head probe (IL104): measured logit std and initial cross-entropy against ln(C).

The shared pass reduces the head's output to the std of its logits and the cross-entropy expected under a
uniformly random target, ``logsumexp(z) - mean_c z_c`` per row: the exact mean over the C possible labels, so
no label draw adds noise to it.
"""

from __future__ import annotations

import math

import torch

from ..findings import Finding
from ..graph import ModelGraph
from ..ops import ConvParams
from . import repairs
from .records import Context, Edit, Measurement, Needs, Tap, Unrepairable, finding_op, finite, judge

# The initial cross-entropy 1 nat or more above ln(C), IL104's EXCESS_NATS.
EXCESS_NATS = 1.0
# The fix's bias rule: a bias of second moment above a tenth of the target logit variance is zeroed (IL104's).
TARGET_STD = 0.5


def _class_dim(graph: ModelGraph, finding: Finding) -> int:
    return 1 if isinstance(finding_op(graph, finding).params, ConvParams) else -1


def _reducer(dim: int):
    def reduce(z: torch.Tensor) -> torch.Tensor:
        z = z.detach().double().movedim(dim, -1)
        z = z.reshape(-1, z.shape[-1])
        loss = (torch.logsumexp(z, dim=-1) - z.mean(dim=-1)).mean()
        return torch.stack([z.std(correction=0), loss, torch.tensor(float(z.shape[-1]), dtype=z.dtype)]).cpu()

    return reduce


def head_needs(graph: ModelGraph, finding: Finding) -> Needs:
    return Needs.of(taps=[Tap(finding_op(graph, finding).name, "logits", _reducer(_class_dim(graph, finding)))])


def head_measure(ctx: Context, finding: Finding) -> Measurement:
    op = finding_op(ctx.graph, finding)
    stats = ctx.tap(op.name, "logits")
    if stats is None:
        return ctx.missing(f"the logits of `{op.module or op.name}`")
    std, loss, classes = (float(v) for v in stats)
    uniform = math.log(classes)
    numbers = {"logit_std": std, "cross_entropy": loss, "ln_classes": uniform, "excess_nats": loss - uniform}
    return Measurement(numbers, judge(loss - uniform, EXCESS_NATS))


def head_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    op = finding_op(graph, finding)
    std = finding.predicted.get("target_std")
    if op.weight is None or not finite(std):
        raise Unrepairable("the finding gives no target std")
    repairs.reinit_normal(model, op.weight.name, std)
    if op.bias is not None and op.bias.second_moment > 0.1 * TARGET_STD**2:
        repairs.zero(model, op.bias.name)
    return ()


__all__ = ["head_needs", "head_measure", "head_repair", "EXCESS_NATS"]
