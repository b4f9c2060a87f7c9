"""The saturated-activation probe (IL302): the measured fraction of units whose slope is below a tenth of its
peak, and the gradient's second moment through the activation relative to the linear range.

The shared pass reduces the activation's input: the slope is the activation's own derivative (by autograd on
PyTorch's function, as the variance engine computes it) at every measured value.
"""

from __future__ import annotations

import math

import torch

from ..findings import Finding
from ..gains import activation_with_derivative
from ..graph import ModelGraph
from ..ops import Activation, ActivationParams, OpKind
from . import repairs
from .records import (
    Context, Edit, Measurement, Needs, ScaleAfter, Tap, Unrepairable, finding_op, finite, judge,
)

# A unit is saturated where its slope is below 10% of the peak (IL302's SLOPE); the finding is confirmed when
# half the units or more are (IL302's WARN_FRACTION).
SLOPE = 0.1
SATURATED = 0.5


def _peak(p: ActivationParams) -> float:
    """The activation's peak slope on the rule's lattice: the rule's own reading, computed once per process."""
    from initlint.rules.saturated_activation import _shape

    return _shape(p)[0]


def _reducer(p: ActivationParams):
    peak = _peak(p)

    def reduce(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().double().reshape(-1)
        _, d = activation_with_derivative(p, x)  # closed-form slopes (tanh's to rounding), else autograd
        saturated = d.abs() < SLOPE * peak
        if p.fn is Activation.RELU6:
            saturated &= x > 0  # below 0 it is ReLU's dead half, not saturation
        return torch.stack([saturated.double().mean(), (d * d).mean() / peak**2]).cpu()

    return reduce


def saturation_needs(graph: ModelGraph, finding: Finding) -> Needs:
    op = finding_op(graph, finding)
    if not isinstance(op.params, ActivationParams) or not op.inputs:
        raise Unrepairable(f"`{op.name}` is not an activation")
    return Needs.of(forward_ops=[op.inputs[0]], taps=[Tap(op.inputs[0], "slopes", _reducer(op.params))])


def saturation_measure(ctx: Context, finding: Finding) -> Measurement:
    op = finding_op(ctx.graph, finding)
    stats = ctx.tap(op.inputs[0], "slopes")
    s = ctx.signal(op.inputs[0])
    if stats is None or s is None:
        return ctx.missing(f"the input of `{op.module or op.name}`")
    fraction, gradient = (float(v) for v in stats)
    numbers = {"saturated_fraction": fraction, "gradient_factor": gradient,
               "input_std": math.sqrt(s.forward.variance), "input_mean": s.forward.mean}
    return Measurement(numbers, judge(fraction, SATURATED))


def saturation_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    """The producing layer's weight rescaled so that the input std is the target (its bias zeroed when it alone
    would saturate), else a scale inserted before the activation."""
    op = finding_op(graph, finding)
    target, std, mean = (finding.predicted.get(k) for k in ("target_input_std", "input_std", "input_mean"))
    if not finite(target, std, mean):
        raise Unrepairable("the finding gives no target input std")
    x = graph.signal(op.inputs[0])
    src = graph.op(op.inputs[0])
    while src.kind in (OpKind.PASSTHROUGH, OpKind.DROPOUT) and src.inputs:
        src = graph.op(src.inputs[0])
    if src.kind not in (OpKind.LINEAR, OpKind.CONV) or src.weight is None or x is None:
        return (ScaleAfter(op.inputs[0], target / math.hypot(std, mean)),)
    b = src.bias
    bias_var = b.second_moment if b is not None else 0.0
    weight_part = max(x.forward.second - bias_var, 1e-30)
    repairs.scale(model, src.weight.name, target / math.sqrt(weight_part))
    if b is not None and bias_var > 0.25 * target**2:
        repairs.zero(model, b.name)
    return ()


__all__ = ["saturation_needs", "saturation_measure", "saturation_repair", "SATURATED"]
