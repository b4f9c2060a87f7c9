"""Probes of gradients: the last layer's gradient of a Post-LN stack against depth (IL204), and the gradient
ratio between the first and the last step of a recurrence (IL105).

IL204 measures what the finding says, that the last layer's gradient at init does not shrink with depth: the
gradient norm of the last block's output weight (``linear2`` of a transformer layer, else its last linear
layer) for the shared pass's loss, eagerly in eval mode (so that dropout does not make the runs differ), once
through the whole stack and once with every earlier block bypassed (a forward hook returns the block's input),
the last block alone. Post-LN keeps the ratio at about 1 whatever the depth (measured 0.78-1.08 at 6 layers);
Pre-LN's falls as 1/sigma(x_L), the growth of its residual stream (0.44-0.73 at 6 layers with branches
initialized like their input, 0.82-0.88 with PyTorch's default init, whose branches are weak). The same run
measures that growth, the rms of the last block's output over the first's: 1.000 for Post-LN, whose norm after
every add renormalizes the stream, 1.05 and up for Pre-LN; a growing stream is not reproduced. The
blocks are the numbered modules of the residual adds (``layers.3``, ``blocks.5``); a stack that applies one
module again and again cannot be cut and is inconclusive.

The fix is verified with the same measurement on the repaired copy. Where the layers have a ``norm_first``
switch the repair turns them Pre-LN (a final norm added where the stack has none), and the repaired stack's
last block must now lose 10% or more of its gradient to depth, against the repaired block alone. Elsewhere it
applies DeepNorm (Wang et al. 2022) to the weights: Xavier normal with gain beta = (8L)^(-1/4) on the
feed-forward layers, on the value projections (those upstream of no attention logits: a packed q/k/v
projection keeps its init) and on the output projections, and alpha = (2L)^(1/4) on the skip, applied as
``1/alpha`` on each branch's output weight and bias, which the norm after the sum cannot tell apart
(``norm(alpha x + f(x)) = norm(x + f(x) / alpha)`` up to its eps). DeepNorm keeps Post-LN, so its block alone
keeps the constants for L layers: there the last layer's gradient through the repaired stack must be 10% or
more lower, against the block as given alone, than before.

IL105 runs a recurrent module alone on seeded random input of small amplitude (the recurrence's linear
regime, which the init controls; tanh's own contraction at larger inputs is not the finding's claim) and
compares the input gradient at the first and last steps for a loss on the last output. A hand-written
recurrence is read from a pass of the captured graph: the gradient at the first and at the last use of its
matrix, on copies of the weights with the biases zeroed and the float inputs scaled by the same small
amplitude (the linear regime), beside the shared pass's reading as given.
"""

from __future__ import annotations

import copy
import math
import re

import torch
from torch import nn

from ..findings import Finding, ProbeStatus
from ..graph import ModelGraph
from ..ops import OpKind, RecurrentMode, RecurrentParams
from ..patterns import branch_ops, residual
from ..state import preserved
from . import repairs
from .records import Context, Edit, Measurement, Needs, Unrepairable, badness, judge
from ..measure import surrogate_loss

# IL204: the last block's gradient through the whole stack over the same block alone, 0.7 or more: "does not
# shrink with depth" (against Pre-LN's 1/sqrt(L), 0.41 at 6 layers), confirmed; below 0.7 / 1.25 = 0.56 it
# shrinks, not reproduced. Post-LN at 6 layers, measured: 0.88-1.08 over four seeds on IL204's benchmark stacks,
# 0.78 on six cloned nn.TransformerEncoderLayers (identical blocks make the last block's input unlike the raw
# input; the ratio is a noisy reading of depth, +-25%). Pre-LN: 0.44-0.73 with Xavier branches or cloned layers,
# but 0.82-0.88 with nn.TransformerEncoderLayer's default init, whose weak branches barely grow the stream: the
# stream's growth below tells those apart.
DOES_NOT_SHRINK = 0.7
# The stream's rms from the first block's output to the last's: Post-LN renormalizes it after every add (1.000 at
# init, norm weights at 1), so 1/sigma(x_L), the factor Xiong et al.'s Theorem 1 puts on the last layer's
# gradient, stays constant in depth: confirmed only at 1.02 or below. From 1.05 up it grows as Pre-LN's does
# (measured at 6 layers: 1.11 with the default init, 1.4-2.0 with Xavier branches or cloned layers; 1.05 at 2
# default-init layers), and the last layer's gradient shrinks by as much: not reproduced, even where the other
# effects of depth on the gradient (+-10%) hide that from the first ratio.
RENORMALIZED = 1.02
GROWS = 1.05
# After the fix the last layer's gradient at depth must be this much lower, relative to one block, than before.
FIX_GAP = 1.10
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

_ATTENTION_KINDS = (OpKind.ATTENTION, OpKind.SOFTMAX)
_NUMBERED = re.compile(r"^((?:.*?\.)?\d+)(\.|$)")


def _switchable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "norm_first", None), bool)]


def _last_weight(layer: nn.Module) -> str:
    """The feed-forward output weight of a transformer layer (its last linear layer otherwise), relative."""
    if isinstance(getattr(layer, "linear2", None), nn.Linear):
        return "linear2.weight"
    names = [n for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise Unrepairable("the last block has no linear layer")
    return f"{names[-1]}.weight"


def _switch_to_pre_ln(model: nn.Module) -> nn.Module:
    """Every switchable layer of ``model`` Pre-LN, and a final norm on stacks that have none (in place)."""
    for _, layer in _switchable(model):
        layer.norm_first = True
    for m in model.modules():
        layers = getattr(m, "layers", None)
        if (isinstance(layers, nn.ModuleList) and hasattr(m, "norm") and len(layers)
                and (m.norm is None or isinstance(m.norm, nn.Identity))):
            norm = getattr(layers[-1], "norm1", None)
            if isinstance(norm, nn.LayerNorm):
                m.norm = nn.LayerNorm(norm.normalized_shape, eps=norm.eps).to(norm.weight.device, norm.weight.dtype)
    return model


def stack_blocks(graph: ModelGraph) -> list[str]:
    """The stack's blocks in graph order: the numbered modules (``layers.3``) of its Post-LN residual adds, or of
    its residual adds around attention where none is Post-LN (a finding forced on a Pre-LN stack)."""
    from ..rules.post_ln import post_ln_adds

    adds = [add for add, *_ in post_ln_adds(graph)]
    if not adds:
        adds = [op for op in graph.of_kind(OpKind.ADD) if (res := residual(graph, op)) is not None
                and any(graph.op(n).kind in _ATTENTION_KINDS for n in branch_ops(graph, res))]
    blocks = []
    for add in adds:
        match = _NUMBERED.match(add.module or "")
        if match and match.group(1) not in blocks:
            blocks.append(match.group(1))
    return blocks


def _bypass(module: nn.Module, args: tuple, kwargs: dict, output):
    """A forward hook that makes a block the identity: its output replaced by its input."""
    x = args[0] if args else next(iter(kwargs.values()), None)
    y = output[0] if isinstance(output, (tuple, list)) and output else output
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape:
        raise Unrepairable("a block's output is not a tensor of its input's shape, so it cannot be bypassed")
    if isinstance(output, (tuple, list)):
        return type(output)([x, *output[1:]])
    return x


def _identity(*args, **kwargs):
    return args[0] if args else next(iter(kwargs.values()))


def _shape_kept(seen: dict[int, bool]):
    """A forward hook noting whether a block returns one tensor of its input's shape (so that a bypass may skip
    its forward: the block's output is its input, whatever the block computes)."""
    def hook(module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        x = args[0] if args else next(iter(kwargs.values()), None)
        seen[id(module)] = isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor) and x.shape == output.shape
    return hook


def _rms(out: list[float]):
    def hook(module: nn.Module, args: tuple, output) -> None:
        y = output[0] if isinstance(output, (tuple, list)) and output else output
        if isinstance(y, torch.Tensor):
            out.append(float(y.detach().double().square().mean().sqrt()))
    return hook


def last_layer_gradient(model: nn.Module, param: str, ctx: Context, bypass: tuple[str, ...] = (),
                        watch: tuple[str, ...] = (), rms: list[float] | None = None,
                        kept: dict[int, bool] | None = None) -> float:
    """The gradient norm of ``param`` for the loss ``sum <y, r>`` (r seeded as in the shared pass), eval mode;
    the blocks in ``bypass`` made the identity by forward hooks (removed after), the root mean square of the
    outputs of the blocks in ``watch`` appended to ``rms``, and in ``kept`` whether each returned one tensor of its
    input's shape. A bypassed block ``kept`` says does is not run at all (its forward replaced by the identity
    for this pass: the same output, without computing what is thrown away)."""
    handles = []
    skipped: list[tuple[nn.Module, bool, object]] = []
    try:
        with preserved(model), torch.enable_grad():
            for path in bypass:
                block = repairs.submodule(model, path)
                if kept is not None and kept.get(id(block)):
                    skipped.append((block, "forward" in block.__dict__, block.__dict__.get("forward")))
                    block.forward = _identity
                else:
                    handles.append(block.register_forward_hook(_bypass, with_kwargs=True))
            for path in watch:
                block = repairs.submodule(model, path)
                handles.append(block.register_forward_hook(_rms(rms)))
                if kept is not None:
                    handles.append(block.register_forward_hook(_shape_kept(kept), with_kwargs=True))
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
    finally:
        for h in handles:
            h.remove()
        for block, had, forward in skipped:
            if had:
                block.forward = forward
            else:
                del block.forward
    return float(g.detach().double().norm()) if g is not None else math.nan


def post_ln_measure(ctx: Context, finding: Finding) -> Measurement:
    blocks = stack_blocks(ctx.graph)
    if len(blocks) < 2:
        return Measurement({}, ProbeStatus.INCONCLUSIVE,
                           "the stack's blocks are not separate numbered submodules (`layers.0`, `layers.1`, ...), "
                           "so the earlier ones cannot be bypassed to measure the last one's gradient against depth")
    last, depth = blocks[-1], len(blocks)
    param = f"{last}.{_last_weight(repairs.submodule(ctx.model, last))}"
    rms: list[float] = []
    kept: dict[int, bool] = {}
    here = last_layer_gradient(ctx.model, param, ctx, watch=tuple(blocks), rms=rms, kept=kept)
    growth = rms[-1] / rms[0] if len(rms) >= 2 and rms[0] > 0 else math.nan
    before = ctx.before.numbers if ctx.before is not None else {}
    if "one_block_last_layer_gradient" in before:  # after the fix
        switched = _switchable(ctx.model)
        if switched and all(layer.norm_first for _, layer in switched):  # Pre-LN: against the repaired block alone
            alone, reference = last_layer_gradient(ctx.model, param, ctx, tuple(blocks[:-1]), kept=kept), \
                "the repaired block"
        else:  # DeepNorm: its block alone keeps the constants for L layers; against the block as given
            alone, reference = before["one_block_last_layer_gradient"], "the block as given"
        factor = here / alone if alone > 0 else math.inf
        gap = before["depth_gradient_factor"] / factor if factor > 0 else math.inf
        numbers = {"last_layer_gradient": here, "one_block_last_layer_gradient": alone,
                   "depth_gradient_factor": factor, "depth_factor_before_over_after": gap,
                   "gradient_before_over_after": before["last_layer_gradient"] / here if here > 0 else math.inf,
                   "stream_growth": growth}
        status = (ProbeStatus.NOT_REPRODUCED if gap >= FIX_GAP else
                  ProbeStatus.CONFIRMED if gap < 1.0 else ProbeStatus.INCONCLUSIVE)
        detail = (f"`{param}`'s gradient: {here:.3g} through the {depth} blocks, x{factor:.3g} of {reference} "
                  f"alone ({gap:.3g}x lower than before)")
        return Measurement(numbers, status, detail)
    alone = last_layer_gradient(ctx.model, param, ctx, tuple(blocks[:-1]), kept=kept)
    factor = here / alone if alone > 0 else math.inf
    numbers = {"last_layer_gradient": here, "one_block_last_layer_gradient": alone,
               "depth_gradient_factor": factor, "stream_growth": growth, "layers": float(depth)}
    detail = (f"`{param}`'s gradient: {here:.3g} through the {depth} blocks, {alone:.3g} with the first {depth - 1} "
              f"bypassed: x{factor:.3g} with depth; the stream's rms x{growth:.3g} from the first block's output "
              f"to the last's (Post-LN keeps both at about 1; Pre-LN's stream grows and the last layer's gradient "
              f"shrinks as 1/sigma(x_L), to 1/sqrt({depth}) = {1 / math.sqrt(depth):.2g} with branches as strong "
              f"as their input)")
    status = judge(factor, DOES_NOT_SHRINK)
    if not growth <= RENORMALIZED:  # a growing stream (or none measured): not the depth-free gradient claimed
        status = ProbeStatus.NOT_REPRODUCED if growth >= GROWS else ProbeStatus.INCONCLUSIVE
    return Measurement(numbers, status, detail)


def _logit_side(graph: ModelGraph, ops: frozenset[str]) -> set[str]:
    """The branch ops upstream of attention logits: the query and key side (softmax inputs, fused q and k)."""
    roots: list[str] = []
    for name in ops:
        op = graph.op(name)
        if op.kind is OpKind.SOFTMAX:
            roots += op.inputs
        elif op.kind is OpKind.ATTENTION:
            roots += op.inputs[:2]
    seen: set[str] = set()
    while roots:
        n = roots.pop()
        if n in seen or n not in ops:
            continue
        seen.add(n)
        roots += graph.op(n).inputs
    return seen


def post_ln_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    """Pre-LN where the layers have a ``norm_first`` switch; DeepNorm's constants on the weights otherwise."""
    if _switchable(model):
        _switch_to_pre_ln(model)
        return ()
    from ..rules.post_ln import post_ln_adds

    post = post_ln_adds(graph)
    depth = sum(1 for *_, attention in post if attention)
    if not depth:
        raise Unrepairable("no Post-LN residual add around attention in the captured graph")
    alpha, beta = (2 * depth) ** 0.25, (8 * depth) ** -0.25
    drawn: set[str] = set()
    scaled: set[str] = set()
    for add, *_ in post:
        ops = branch_ops(graph, residual(graph, add))
        linears = sorted((graph.op(n) for n in ops if graph.op(n).kind is OpKind.LINEAR
                          and graph.op(n).weight is not None), key=lambda o: graph.position(o.name))
        if not linears:
            continue
        logits, out = _logit_side(graph, ops), linears[-1]
        for op in linears:  # feed-forward, value and output projections: Xavier normal with gain beta
            name = op.weight.name
            if (op.name in logits and op is not out) or name in drawn:
                continue
            drawn.add(name)
            w = repairs.parameter(model, name)
            repairs.reinit_normal(model, name, beta * math.sqrt(2.0 / (w.shape[0] + w[0].numel())))
        for name in (out.weight.name, out.weight.name.removesuffix("weight") + "bias"):  # alpha on the skip
            if name in scaled or (name.endswith("bias") and not _has(model, name)):
                continue
            scaled.add(name)
            repairs.scale(model, name, 1.0 / alpha)
    if not drawn:
        raise Unrepairable("no linear layer in the Post-LN branches")
    return ()


def _has(model: nn.Module, name: str) -> bool:
    try:
        return model.get_parameter(name) is not None
    except AttributeError:
        return False


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
    unit = math.sqrt(first / last)
    small = _small_input_factor(ctx, uses[0], uses[-1])
    factor = small if small is not None else unit
    numbers = {"gradient_factor": factor, "unit_input_gradient_factor": unit, "seq_len": float(len(uses))}
    detail = (f"gradient at the first use of the matrix over the last, {len(uses)} uses: "
              + (f"{small:.3g} with the float inputs x{SMALL_INPUT:g} and the biases zeroed (the recurrence's "
                 f"linear regime), {unit:.3g} as given" if small is not None else f"{unit:.3g} as given"))
    return Measurement(numbers, judge(badness(factor), RECURRENCE), detail)


def _small_input_factor(ctx: Context, first: str, last: str) -> float | None:
    """The first/last gradient ratio of a hand-written recurrence from one more pass of the captured graph, on
    copies of the weights with the biases zeroed and the float inputs scaled to ``SMALL_INPUT``: the
    recurrence's linear regime, which the init controls (tanh's contraction at the example's amplitude, or at
    its biases' offsets, is not the finding's claim). None where that pass cannot run."""
    from torch.utils import _pytree as pytree

    from .runner import Runnable, run_pass

    if ctx.runnable is None:
        return None

    def small(v):
        return v * SMALL_INPUT if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    r = ctx.runnable
    if r.captured is None or r.program is None:  # hooks: the user's model itself runs, no copy to zero the biases of
        return None
    args, kwargs = pytree.tree_map(small, (tuple(r.inputs.args), dict(r.inputs.kwargs)))
    values = tuple(pytree.tree_map(small, list(r.values)))
    model = copy.deepcopy(r.model)  # the graph on copies of the weights, biases zeroed
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rpartition(".")[2].startswith("bias"):
                p.zero_()
    linear = Runnable.of(r.program, r.graph, model, r.edits).with_inputs(type(r.inputs)(args, kwargs, r.inputs.source),
                                                                         values)
    try:
        ev = run_pass(linear, Needs.of(ops=[first, last]), ctx.device, ctx.seed)
    except Exception:  # noqa: BLE001 - the pass as given still speaks
        return None
    a, b = ev.signals.get(first), ev.signals.get(last)
    if a is None or b is None or a.backward is None or b.backward is None or not b.backward.second > 0:
        return None
    return math.sqrt(a.backward.second / b.backward.second)


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


__all__ = ["post_ln_measure", "post_ln_repair", "last_layer_gradient", "stack_blocks", "recurrent_needs",
           "recurrent_measure", "recurrent_repair", "DOES_NOT_SHRINK", "RENORMALIZED", "GROWS", "FIX_GAP",
           "RECURRENCE"]
