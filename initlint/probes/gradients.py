"""Probes of gradients: the last layer's gradient of a Post-LN stack against the same blocks arranged Pre-LN
(IL204), and the gradient ratio between the first and the last step of a recurrence (IL105).

IL204 runs the model twice, eagerly: as it is and with every layer that has a ``norm_first`` switch
(``nn.TransformerEncoderLayer``, ``nn.TransformerDecoderLayer``) turned to Pre-LN, with a final norm added
where the stack has none, both in eval mode so that dropout does not make the two runs differ. Other Post-LN
code cannot be rearranged mechanically, and its probe is inconclusive.

IL105 runs a recurrent module alone on seeded random input of small amplitude (the recurrence's linear
regime, which the init controls; tanh's own contraction at larger inputs is not the finding's claim) and
compares the input gradient at the first and last steps for a loss on the last output. A hand-written
recurrence is read from the shared pass: the gradient at the first and at the last use of its matrix.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..findings import Finding, ProbeStatus
from ..graph import ModelGraph
from ..ops import OpKind, RecurrentMode, RecurrentParams
from ..state import preserved
from . import repairs
from .records import Context, Edit, Measurement, Needs, Unrepairable, badness, judge
from ..measure import surrogate_loss

# IL204: the last layer's gradient as arranged (Post-LN) 10% or more above the same blocks arranged Pre-LN.
# Measured with nn.TransformerEncoderLayer at init (IL204's docs): 1.02, 1.08, 1.22 at depths 2, 4, 8 with
# PyTorch's default init; paired runs (same weights, inputs and loss) repeat to about 1%.
PRE_LN_GAP = 1.10
# Below this the Post-LN gradient is not larger than the Pre-LN one at all: not reproduced.
NO_GAP = 1.0
# IL105: the gradient ratio between the first and last steps 10x or more from 1 either way, IL105's
# OVER_SEQUENCE.
RECURRENCE = 10.0
# IL105's input amplitude: small enough that tanh and its slope stay within 1% of the linear recurrence's.
SMALL_INPUT = 1e-2
# The repair re-draws the recurrent matrices whose radius is outside [1/1.25, 1.25] (IL105's BAND).
RADIUS_BAND = 1.25
RNN_BATCH = 4
DEFAULT_STEPS = 20


# -- IL204 post-ln -----------------------------------------------------------------------------------------


def _switchable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "norm_first", None), bool)]


def _last_weight(layer: nn.Module) -> str:
    """The feed-forward output weight of a transformer layer (its last linear layer otherwise), relative."""
    if isinstance(getattr(layer, "linear2", None), nn.Linear):
        return "linear2.weight"
    names = [n for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise Unrepairable("the last layer has no linear layer")
    return f"{names[-1]}.weight"


def _switch_to_pre_ln(model: nn.Module) -> nn.Module:
    """Every switchable layer of ``model`` Pre-LN, and a final norm on stacks that have none (in place)."""
    for _, layer in _switchable(model):
        layer.norm_first = True
    for m in model.modules():
        layers = getattr(m, "layers", None)
        if isinstance(layers, nn.ModuleList) and hasattr(m, "norm") and m.norm is None and len(layers):
            norm = getattr(layers[-1], "norm1", None)
            if isinstance(norm, nn.LayerNorm):
                m.norm = nn.LayerNorm(norm.normalized_shape, eps=norm.eps).to(norm.weight.device, norm.weight.dtype)
    return model


def last_layer_gradient(model: nn.Module, param: str, ctx: Context) -> float:
    """The gradient norm of ``param`` for the loss ``sum <y, r>`` (r seeded as in the shared pass), eval mode."""
    with preserved(model), torch.enable_grad():
        model.eval()
        torch.manual_seed(ctx.seed)
        p = model.get_parameter(param)
        args = [a.to(ctx.device) if isinstance(a, torch.Tensor) else a for a in ctx.inputs.args]
        kwargs = {k: v.to(ctx.device) if isinstance(v, torch.Tensor) else v for k, v in ctx.inputs.kwargs.items()}
        out = model(*args, **kwargs)
        outs = [t for t in (out if isinstance(out, (tuple, list)) else [out])
                if isinstance(t, torch.Tensor) and t.is_floating_point()]
        loss = surrogate_loss(outs, ctx.seed)
        (g,) = torch.autograd.grad(loss, [p], allow_unused=True)
    return float(g.detach().double().norm()) if g is not None else math.nan


def post_ln_measure(ctx: Context, finding: Finding) -> Measurement:
    layers = _switchable(ctx.model)
    if not layers:
        return Measurement({}, ProbeStatus.INCONCLUSIVE,
                           "no layer has a `norm_first` switch, so the blocks cannot be arranged Pre-LN to compare")
    name, last = layers[-1]
    param = f"{name}.{_last_weight(last)}" if name else _last_weight(last)
    here = last_layer_gradient(ctx.model, param, ctx)
    if all(layer.norm_first for _, layer in layers):
        numbers = {"last_layer_gradient": here}
        before = ctx.before.numbers.get("last_layer_gradient") if ctx.before is not None else None
        if before:  # after the fix: the last layer's gradient must have come down to Pre-LN's
            gap = before / here
            numbers["gradient_before_over_after"] = gap
            status = (ProbeStatus.NOT_REPRODUCED if gap >= PRE_LN_GAP else
                      ProbeStatus.CONFIRMED if gap < NO_GAP else ProbeStatus.INCONCLUSIVE)
            return Measurement(numbers, status, "the layers are Pre-LN")
        return Measurement(numbers, ProbeStatus.NOT_REPRODUCED, "every layer already normalizes before its sublayer")
    pre = last_layer_gradient(_switch_to_pre_ln(copy.deepcopy(ctx.model)), param, ctx)
    gap = here / pre if pre > 0 else math.inf
    depth = len(layers)
    numbers = {"last_layer_gradient": here, "pre_ln_last_layer_gradient": pre,
               "pre_ln_last_layer_gradient_factor": pre / here if here > 0 else math.nan, "layers": float(depth)}
    detail = (f"`{param}`'s gradient: {here:.3g} as arranged, {pre:.3g} with the same {depth} blocks Pre-LN "
              f"(ratio {gap:.3g}; 1/sqrt({depth}) = {1 / math.sqrt(depth):.2g} is the bound for branches as strong "
              f"as their input)")
    return Measurement(numbers, judge(gap, PRE_LN_GAP, gray=PRE_LN_GAP / NO_GAP), detail)


def post_ln_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    if not _switchable(model):
        raise Unrepairable("no layer has a `norm_first` switch; move the norms by hand (Pre-LN)")
    _switch_to_pre_ln(model)
    return ()


# -- IL105 recurrent-radius --------------------------------------------------------------------------------


def _rnn_ratio(module: nn.Module, p: RecurrentParams, steps: int, amplitude: float, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    shape = (RNN_BATCH, steps, p.input_size) if p.batch_first else (steps, RNN_BATCH, p.input_size)
    weight = next(module.parameters())
    x = (amplitude * torch.randn(shape, generator=gen)).to(weight.device, weight.dtype).requires_grad_(True)
    with preserved(module), torch.enable_grad():
        module.train()
        y, _ = module(x)
        last = y[:, -1] if p.batch_first else y[-1]
        r = torch.randn(last.shape, generator=gen).to(last.device, last.dtype)
        (g,) = torch.autograd.grad((last * r).sum(), [x])
    g = g.detach().double()
    first, final = (g[:, 0], g[:, -1]) if p.batch_first else (g[0], g[-1])
    return float(first.norm() / final.norm()) if final.norm() > 0 else math.nan


def _hand_written_uses(graph: ModelGraph, finding: Finding) -> list[str]:
    op = graph.op(finding.op)
    if op.weight is None:
        return []
    return [o.name for o in graph.of_kind(OpKind.LINEAR) if o.weight is not None and o.weight.name == op.weight.name]


def recurrent_needs(graph: ModelGraph, finding: Finding) -> Needs:
    if finding.op is None or graph.op(finding.op).kind is OpKind.RECURRENT:
        return Needs()
    uses = _hand_written_uses(graph, finding)
    return Needs.of(ops=[uses[0], uses[-1]] if len(uses) >= 2 else [])


def recurrent_measure(ctx: Context, finding: Finding) -> Measurement:
    op = ctx.graph.op(finding.op)
    if op.kind is OpKind.RECURRENT:
        p = op.params
        if not isinstance(p, RecurrentParams) or p.mode not in (RecurrentMode.RNN_TANH, RecurrentMode.RNN_RELU):
            return ctx.missing("a vanilla RNN")
        steps = int(finding.predicted.get("seq_len") or p.seq_len or DEFAULT_STEPS)
        module = repairs.submodule(ctx.model, op.module)
        small = _rnn_ratio(module, p, steps, SMALL_INPUT, ctx.seed)
        unit = _rnn_ratio(module, p, steps, 1.0, ctx.seed)
        numbers = {"gradient_factor": small, "unit_input_gradient_factor": unit, "seq_len": float(steps)}
        detail = (f"input gradient at the first step over the last, {steps} steps: {small:.3g} at small input "
                  f"(the recurrence's linear regime), {unit:.3g} at unit input")
        return Measurement(numbers, judge(badness(small), RECURRENCE), detail)
    uses = _hand_written_uses(ctx.graph, finding)
    if len(uses) < 2:
        return ctx.missing("the uses of the recurrent matrix")
    first, last = ctx.backward_second(uses[0]), ctx.backward_second(uses[-1])
    if first is None or last is None or not last > 0:
        return ctx.missing("the gradient through the recurrence")
    factor = math.sqrt(first / last)
    numbers = {"gradient_factor": factor, "seq_len": float(len(uses))}
    return Measurement(numbers, judge(badness(factor), RECURRENCE))


def recurrent_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    """``orthogonal_`` (``eye_`` for ReLU recurrences) on each recurrent matrix whose radius is off."""
    op = graph.op(finding.op)
    if op.kind is OpKind.RECURRENT and isinstance(op.params, RecurrentParams):
        relu = op.params.mode is RecurrentMode.RNN_RELU
        names = [w.name for w, r in zip(op.params.hidden_weights, op.params.spectral_radius)
                 if not (1 / RADIUS_BAND <= r <= RADIUS_BAND)] or [w.name for w in op.params.hidden_weights]
    elif op.weight is not None:
        relu = False
        names = [op.weight.name]
    else:
        raise Unrepairable("the finding names no recurrent matrix")
    for name in names:
        (repairs.eye if relu else repairs.orthogonal)(model, name)
    return ()


__all__ = ["post_ln_measure", "post_ln_repair", "last_layer_gradient", "recurrent_needs", "recurrent_measure",
           "recurrent_repair", "PRE_LN_GAP", "RECURRENCE"]
