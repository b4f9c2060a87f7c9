"""The float16-range probe (IL301): the model run under ``torch.autocast`` in float16 (and bfloat16 where the
finding says its range holds), counting at every op along the finding's signal path the values that overflow
to inf or NaN and the nonzero values that fall below float16's normal range, and naming the first op where it
happens: the frame transformers' underflow/overflow debugger prints, per op instead of per module. The
ranges are autocast taps (:class:`~initlint.probes.records.Tap`): one float16 pass (and one bfloat16 pass)
reads them for every finding of the stage, beside the shared pass.

For the gradient finding the shared (float32) pass measures the gradients' spread, and the gradient at the
smallest op scaled by the loss scale that keeps the largest finite: the values that float16 would hold only
as subnormals.
"""

from __future__ import annotations

import math

import torch

from ..findings import Finding
from ..graph import ModelGraph
from ..ops import OpKind, ScaleParams
from ..patterns import nonlinearity_after, signal_path
from . import repairs
from .records import Context, Edit, Evidence, Measurement, Needs, ScaleAfter, Tap, Unrepairable, judge
from .runner import keep_all

FP16_MAX = 65504.0
FP16_TINY = 2.0**-14  # smallest normal float16
TAIL = 4.89  # the one-in-a-million value of a Gaussian, in stds: the loss scale keeps it finite (IL301's)
# Overflow is confirmed from one value in a million beyond float16's range (IL301's OVERFLOW); underflow when
# half or more of the nonzero values are subnormal or flushed (IL301's MOST).
OVERFLOW = 1e-6
MOST = 0.5
# The fix re-initializes the layers on the path more than 2x off their variance-preserving std (IL301's).
FIX_OFF = 2.0
_CHECKED = frozenset({OpKind.LINEAR, OpKind.CONV, OpKind.MATMUL, OpKind.ATTENTION, OpKind.RECURRENT,
                      OpKind.EMBEDDING, OpKind.ACTIVATION, OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.SCALE,
                      OpKind.NORM, OpKind.POOL})


def _kind(finding: Finding) -> str:
    p = finding.predicted
    return "overflow" if "overflow_fraction" in p else "gradients" if "spread" in p else "underflow"


def _range_stats(t: torch.Tensor) -> torch.Tensor:
    """[inf/nan fraction, fraction below float16's normal range, zero fraction, largest finite |x|, numel].

    A float16 tensor is read by its bits, sign cleared, which order as the magnitudes do: zero is 0, below
    the normal range is under 0x0400, inf and NaN from 0x7C00 up (three passes over two bytes an element).
    Other dtypes by three passes over a float32 copy. One readback; only when the largest |x| is not finite are
    the inf/nan counted and the largest finite value looked for."""
    x = t.detach()
    n = x.numel()
    if not n:
        return torch.tensor([math.nan, math.nan, math.nan, 0.0, 0.0])
    if x.dtype == torch.float16:
        m = x.view(torch.int16) & 0x7FFF
        top, small, nonzero = torch.stack([m.amax().long(), torch.count_nonzero(m < 0x0400),
                                           torch.count_nonzero(m)]).cpu().tolist()
        if top < 0x7C00:
            return torch.tensor([0.0, small / n, (n - nonzero) / n,
                                 float(torch.tensor(top, dtype=torch.int16).view(torch.float16)), float(n)])
    a = x.float().abs()
    top, small, nonzero = torch.stack([a.amax().double(), torch.count_nonzero(a < FP16_TINY).double(),
                                       torch.count_nonzero(a).double()]).cpu().tolist()
    bad = 0.0
    if not math.isfinite(top):
        finite = torch.isfinite(a)
        bad, top = torch.stack([(n - finite.sum()).double(),
                                torch.where(finite, a, 0.0).amax().double()]).cpu().tolist()
    return torch.tensor([bad / n, small / n, (n - nonzero) / n, top, float(n)])


def _zeros(t: torch.Tensor) -> torch.Tensor:
    return (t.detach() == 0).float().mean().cpu()


def _path(graph: ModelGraph, finding: Finding) -> list[str]:
    return [op.name for op in signal_path(graph, graph.op(finding.op))]


def _checked(graph: ModelGraph, name: str) -> bool:
    op = graph.op(name)
    s = graph.signal(op)
    if op.kind not in _CHECKED or s is None or s.backward is None:
        return False
    if op.dtype is not None and not op.dtype.startswith("float"):
        return False
    return not (isinstance(op.params, ScaleParams) and op.params.param is not None)


def precision_needs(graph: ModelGraph, finding: Finding) -> Needs:
    if _kind(finding) == "gradients":
        checked = [op.name for op in graph if _checked(graph, op.name) and op.kind is not OpKind.EMBEDDING]
        return Needs.of(ops=checked, taps=[Tap(finding.op, "gradient", keep_all, backward=True)])
    # the ranges along the path under float16 autocast (bfloat16 at the op where the finding says it holds),
    # read in one autocast pass per dtype for all the findings of the stage
    taps = [Tap(n, HALF, _range_stats, autocast=torch.float16) for n in _path(graph, finding)]
    if _kind(finding) == "overflow" and finding.predicted.get("bf16_holds"):
        taps.append(Tap(finding.op, BRAIN, _range_stats, autocast=torch.bfloat16))
    if _kind(finding) == "underflow":
        taps.append(Tap(finding.op, "zeros", _zeros))
    return Needs.of(taps=taps)


HALF, BRAIN = "range/float16", "range/bfloat16"


def _frame(graph: ModelGraph, names: list[str], ev: Evidence, limit: int = 6) -> str:
    lines = []
    for n in names:
        s = ev.taps.get((n, HALF))
        if s is None:
            continue
        op = graph.op(n)
        lines.append(f"`{op.module or op.name}` ({op.target}): abs max {float(s[3]):.3g}, "
                     f"{100 * float(s[0]):.3g}% inf/nan, {100 * float(s[1]):.3g}% below 6.1e-05")
    return "; ".join(lines[-limit:])


def precision_measure(ctx: Context, finding: Finding) -> Measurement:
    kind = _kind(finding)
    if kind == "gradients":
        return _gradients(ctx, finding)
    if ctx.runnable is None:
        return ctx.missing("an autocast run")
    names = _path(ctx.graph, finding)
    ev = ctx.evidence
    stats = ev.taps.get((finding.op, HALF))
    if stats is None:
        return ctx.missing(f"`{finding.op}` under autocast")
    bad, small, zero = float(stats[0]), float(stats[1]), float(stats[2])
    first = next((n for n in names if (s := ev.taps.get((n, HALF))) is not None and float(s[0]) > 0), None)
    frame = _frame(ctx.graph, names, ev)
    if kind == "overflow":
        numbers = {"overflow_fraction": bad}
        if finding.predicted.get("bf16_holds"):
            bf = ev.taps.get((finding.op, BRAIN))
            if bf is not None:
                numbers["bf16_overflow_fraction"] = float(bf[0])
        where = f"first inf/nan at `{ctx.graph.op(first).module or first}`; " if first else ""
        return Measurement(numbers, judge(bad, OVERFLOW), where + frame)
    zero32 = ctx.tap(finding.op, "zeros")
    zero32 = float(zero32) if zero32 is not None else 0.0
    fraction = (small - zero32) / (1.0 - zero32) if zero32 < 1.0 else 0.0
    numbers = {"subnormal_fraction": max(fraction, 0.0), "zero_fraction": zero}
    return Measurement(numbers, judge(fraction, MOST), frame)


def _gradients(ctx: Context, finding: Finding) -> Measurement:
    stds = [math.sqrt(b) for op in ctx.graph if op.kind is not OpKind.EMBEDDING and _checked(ctx.graph, op.name)
            and (b := ctx.backward_second(op.name)) is not None and b > 0 and math.isfinite(b)]
    g = ctx.tap(finding.op, "gradient")
    if len(stds) < 2 or g is None:
        return ctx.missing("the gradients")
    top, low = max(stds), min(stds)
    scale = FP16_MAX / (TAIL * top)
    g = g.double().reshape(-1) * scale
    fraction = float(((g.abs() < FP16_TINY) & (g != 0)).double().mean())
    numbers = {"largest_std": top, "smallest_std": low, "spread": top / low, "subnormal_fraction": fraction}
    return Measurement(numbers, judge(fraction, MOST))


def precision_repair(model, finding: Finding, graph: ModelGraph) -> tuple[Edit, ...]:
    if _kind(finding) == "gradients":
        raise Unrepairable("its fix is a training dtype (bfloat16), not a change to the model")
    done = 0
    for op in signal_path(graph, graph.op(finding.op)):
        w = op.weight
        if op.kind not in (OpKind.LINEAR, OpKind.CONV) or w is None or not w.fan_in or not w.rms > 0:
            continue
        _, g2 = nonlinearity_after(graph, op)
        std = math.sqrt(g2 / w.fan_in)
        if abs(math.log(w.rms / std)) > math.log(FIX_OFF):
            repairs.reinit_normal(model, w.name, std)
            done += 1
    if done:
        return ()
    from ..rules.fp16_range import off_scale_inputs  # the rule's own reading, so the fix printed is the one made

    raw = off_scale_inputs(graph, graph.op(finding.op))
    if not raw:
        raise Unrepairable("no layer on the path is more than 2x off its variance-preserving std, and no input "
                           "on it more than 2x off unit scale")
    return tuple(ScaleAfter(op.name, 1.0 / rms) for op, rms in raw)  # `x = x / rms`, as printed


__all__ = ["precision_needs", "precision_measure", "precision_repair"]
