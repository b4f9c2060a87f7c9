"""IL301 fp16-range."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from initlint.findings import Fix, Issue, Severity
from initlint.gains import DTYPE, activation, gaussian
from initlint.graph import ModelGraph
from initlint.ops import Activation, ActivationParams, Op, OpKind, ScaleParams
from initlint.patterns import nonlinearity_after, python_path, sig, signal_path
from initlint.registry import rule

FP16_MAX = 65504.0
FP16_TINY = 2.0**-14  # smallest normal float16, 6.1e-5: below it values are subnormal, with fewer bits
FP16_ZERO = 2.0**-25  # half the smallest subnormal (6e-8): below it a value rounds to zero
BF16_MAX = 3.3895e38  # bfloat16 has float32's exponent range
BF16_TINY = 2.0**-126
# Overflow: a fraction of values beyond the largest finite one at or above one in a million (4.9 standard
# deviations of a centred Gaussian): any realistic batch then holds an inf, and the loss is NaN.
OVERFLOW = 1e-6
# Underflow: most values (half or more) below the normal range lose precision; most below half the smallest
# subnormal are zeros.
MOST = 0.5
# The largest gradient value the loss scale must keep finite: the one-in-a-million value, 4.89 stds.
TAIL = 4.89
# Ops whose output is float16 under `torch.autocast` or in a `.half()` model. Left out: what autocast runs in
# float32 (softmax, norms' statistics, pow, exp, rsqrt, sums) and what only moves values (reshapes, dropout, concat).
_CHECKED = frozenset({OpKind.LINEAR, OpKind.CONV, OpKind.MATMUL, OpKind.ATTENTION, OpKind.RECURRENT,
                      OpKind.EMBEDDING, OpKind.ACTIVATION, OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.SCALE,
                      OpKind.NORM, OpKind.POOL})
_MERGES = frozenset({OpKind.ADD, OpKind.SUB, OpKind.MUL})


@dataclass(frozen=True)
class _Range:
    op: Op
    std: float
    over: float  # fraction of values beyond FP16_MAX
    small: float  # fraction of nonzero values below FP16_TINY (subnormal or flushed)
    zero: float  # fraction of nonzero values below FP16_ZERO (flushed to zero)
    bf16_ok: bool  # bfloat16 holds the values


@rule("IL301", "fp16-range", severity=Severity.WARNING, needs_signals=True)
def fp16_range(graph: ModelGraph) -> list[Issue]:
    """
    ## What it does
    Finds predicted forward and backward magnitudes at init that float16 cannot hold: values beyond its
    largest finite number (65504), values below its smallest normal number (6.1e-5), and gradients whose spread
    no single loss scale fits. It says where bfloat16, which has float32's range, would hold them.

    Checked are the outputs of the ops that run in float16 under `torch.autocast` or in a `.half()` model:
    weight layers, attention, activations, sums, products, scalings, norms and pooling. Masks and constants,
    and what autocast computes in float32 (softmax, `pow`, `rsqrt`, reductions), are not. The predicted values
    are taken as Gaussian with the engine's mean and variance:

    - overflow (`error`): one value in a million or more is beyond 65504, at the first op where it happens. It
      becomes inf, and the loss NaN;
    - underflow: half of the nonzero values or more are below 6.1e-5 (a `warning`: they are subnormal, with
      fewer significant bits, down to one); an `error` where half or more are below 3e-8, half the smallest
      subnormal, and become zeros;
    - gradients (`warning`): at the loss scale that keeps the largest gradients finite (65504 over their
      one-in-a-million value, what `torch.amp.GradScaler` settles at), half of the smallest op's gradient
      values or more are subnormal. Absolute gradient magnitudes depend on the loss, which the scaler
      absorbs; their spread does not.

    ## Why is this bad?
    Measured (claim 12) on a 5-layer linear net of width 512 whose weights are 10x the variance-preserving std:
    the output std reaches 1.0e5 and 51% of the float16 values are inf at depth 5 (NaN from depth 6); the
    Gaussian model predicts 51%. With 0.1x the std, values underflow, but first as subnormals: at depth 5,
    99.8% are subnormal and 0.24% zero (predicted: 100% and 0.24%); zeros dominate only by depth 8. The
    seed chapter's "underflow to zero" is therefore a loss of precision before it is a loss of values, and the
    rule says which.

    bfloat16 keeps float32's exponent range (3.4e38 down to 1.2e-38), so a model that overflows float16 at
    init often trains in bfloat16; its 8-bit mantissa is coarser than float16's 11, so fixing the init is the
    better cure. The fix lists the weight layers on the way that are more than 2x off their variance-preserving
    std, with the std to use; where none is and a model input on the way is more than 2x off unit scale (raw
    int16 audio, pixel values in 0-255), it divides that input by its rms.

    ## Example
    ```python
    import torch
    from torch import nn

    layers = []
    for _ in range(6):
        layer = nn.Linear(512, 512, bias=False)
        nn.init.normal_(layer.weight, std=10 / 512 ** 0.5)  # 10x the std that keeps the variance
        layers.append(layer)
    model = nn.Sequential(*layers)
    example_inputs = torch.randn(64, 512)
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    layers = []
    for _ in range(6):
        layer = nn.Linear(512, 512, bias=False)
        nn.init.normal_(layer.weight, std=1 / 512 ** 0.5)
        layers.append(layer)
    model = nn.Sequential(*layers)
    example_inputs = torch.randn(64, 512)
    ```

    ## References
    - Micikevicius et al. 2018, "Mixed Precision Training" (loss scaling, the float16 range)
    - IEEE 754 binary16; Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training"
    - PyTorch `torch.amp` (autocast op lists, `GradScaler`)
    """
    checked = [op for op in graph if _checked(graph, op)]
    ranges = [r for r in (_range(graph, op) for op in checked) if r is not None]
    issues = []
    over = [r for r in ranges if r.over >= OVERFLOW]
    if over:
        issues.append(_overflow(graph, over))
    small = [r for r in ranges if r.small >= MOST]
    if small:
        issues.append(_underflow(graph, small, [r for r in small if r.zero >= MOST]))
    grads = _gradients(graph, checked)
    if grads is not None:
        issues.append(grads)
    return issues


def _checked(graph: ModelGraph, op: Op) -> bool:
    s = graph.signal(op)
    if op.kind not in _CHECKED or s is None or s.backward is None:
        return False
    if op.dtype is not None and not op.dtype.startswith("float"):
        return False
    if isinstance(op.params, ScaleParams) and op.params.param is not None:
        return False  # a learned or buffer scale (LayerScale): a float32 parameter, float32 under autocast
    if op.kind in _MERGES and any(graph.signal(n) is None or graph.signal(n).backward is None for n in op.inputs):
        return False  # a mask or a constant added in
    return True


def _range(graph: ModelGraph, op: Op) -> _Range | None:
    s = graph.signal(op).forward
    if math.isnan(s.second) or math.isnan(s.mean):
        return None  # no statistics (a model on the meta device)
    if math.isinf(s.second):
        return _Range(op, math.inf, 1.0, 0.0, 0.0, False)
    if s.second <= 0.0:
        return None  # exact zeros (a zero-initialized layer) lose nothing
    std = math.sqrt(s.variance)
    if op.kind is OpKind.ACTIVATION and isinstance(op.params, ActivationParams) and op.inputs:
        x = graph.signal(op.inputs[0]).forward
        over, small, zero, tiny, huge = _activation_fractions(op.params, x.mean, x.variance)
    else:
        if std * _PEAK_SPREAD * MOST > FP16_TINY and s.mean * s.mean + std * std < 0.5 * OVERFLOW * FP16_MAX**2:
            return None  # neither overflow nor most values subnormal, by the bounds below: nothing to report
        over, huge = _beyond(s.mean, std, FP16_MAX), _beyond(s.mean, std, BF16_MAX)
        small, zero, tiny = (_within(s.mean, std, t) for t in (FP16_TINY, FP16_ZERO, BF16_TINY))
    return _Range(op, std, over, small, zero, huge < OVERFLOW and tiny < MOST)


# A Gaussian tensor's range is only reported when OVERFLOW of its values overflow or MOST are subnormal. Its
# fraction beyond FP16_MAX is at most E[x^2] / FP16_MAX^2 (Markov), under OVERFLOW / 2 for a second moment under
# OVERFLOW FP16_MAX^2 / 2; its fraction within FP16_TINY of 0 at most 2 FP16_TINY / (std sqrt(2 pi)) (the
# density's peak), under MOST / 2 for a std over FP16_TINY / (_PEAK_SPREAD MOST). Such a tensor (most of them)
# needs no erfc. The bounds read the thresholds at each call (a test may move them).
_PEAK_SPREAD = math.sqrt(2 * math.pi) / 4


def _activation_fractions(params: ActivationParams, mean: float, variance: float) -> tuple[float, ...]:
    """Fractions of ``|f(x)|`` over, below and far below float16's and bfloat16's range, ``x ~ N(mean, var)``."""
    if params.fn in _CLIPPED:
        fractions = _clipped_fractions(params.fn, mean, variance)
        if fractions is not None:
            return fractions
    rule_ = gaussian(mean, variance)
    y = activation(params)(rule_.nodes).abs()
    # Most activations have every nonzero value well inside float16's range: then every fraction is exactly
    # zero, which two reductions tell without the five masks (NaN fails both tests and takes the masks).
    lo, hi = torch.where(y > 0, y, math.inf).min(), y.max()  # the smallest nonzero value, the largest
    if FP16_TINY <= lo.item() and hi.item() <= FP16_MAX:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    masks = torch.stack([y > FP16_MAX, y < FP16_TINY, y < FP16_ZERO, y < BF16_TINY, y > BF16_MAX]) & (y > 0)
    return tuple((masks.to(DTYPE) * rule_.weights).sum(-1).tolist())


# ReLU and ReLU6: f(x) = min(x, cap) where x > 0, else 0. Their nonzero values on the Gaussian grid are its
# positive nodes, capped, in ascending order: each mask of :func:`_activation_fractions` is a run of them, found
# by bisection without evaluating f.
_CLIPPED = {Activation.RELU: math.inf, Activation.RELU6: 6.0}


@lru_cache(maxsize=1)
def _grid() -> tuple[list[float], list[float]]:
    """The standard grid of :func:`initlint.gains.gaussian` (its nodes at mean 0 and variance 1), ascending, and
    its weights."""
    rule_ = gaussian(0.0, 1.0)
    return rule_.nodes.tolist(), rule_.weights.tolist()


def _clipped_fractions(fn: Activation, mean: float, variance: float) -> tuple[float, ...] | None:
    """:func:`_activation_fractions` for ReLU and ReLU6 on the same node values (``mean + std * t``, each one IEEE
    product and sum, as torch computes them): the masks are runs of the ascending nodes, found by bisection,
    and each fraction the sum of a run's weights (the same terms the masked sum adds, to rounding). Linear in
    the grid at most, with no torch call: a deep stack whose signal drifts out of float16's range takes it at
    every ReLU. ``None`` for an infinite or NaN mean or variance (the torch path decides)."""
    std = math.sqrt(max(variance, 0.0))
    if not (math.isfinite(mean) and math.isfinite(std)):
        return None
    t, w = _grid()
    cap = _CLIPPED[fn]
    first = bisect.bisect_right(t, False, key=lambda v: mean + std * v > 0.0)  # the first node above 0
    if first == len(t) or (FP16_TINY <= min(mean + std * t[first], cap) and min(mean + std * t[-1], cap) <= FP16_MAX):
        return 0.0, 0.0, 0.0, 0.0, 0.0  # every value 0, or every nonzero one in float16's normal range

    def below(c: float) -> float:  # the weight of 0 < f(x) < c
        end = bisect.bisect_right(t, False, key=lambda v: min(mean + std * v, cap) >= c)
        return sum(w[first:end], 0.0)

    def above(c: float) -> float:  # the weight of f(x) > c (> 0)
        start = bisect.bisect_right(t, False, key=lambda v: min(mean + std * v, cap) > c)
        return sum(w[max(start, first):], 0.0)

    return above(FP16_MAX), below(FP16_TINY), below(FP16_ZERO), below(BF16_TINY), above(BF16_MAX)


def _beyond(mean: float, std: float, t: float) -> float:
    """P(|x| > t) for x ~ N(mean, std^2)."""
    if std == 0.0:
        return float(abs(mean) > t)
    r = std * math.sqrt(2.0)
    return 0.5 * math.erfc((t - mean) / r) + 0.5 * math.erfc((t + mean) / r)


def _within(mean: float, std: float, t: float) -> float:
    return 1.0 - _beyond(mean, std, t)


def _overflow(graph: ModelGraph, over: list[_Range]) -> Issue:
    first = over[0]
    name = _name(first.op)
    more = f" (and {len(over) - 1} later ops)" if len(over) > 1 else ""
    bf16 = "bfloat16's range (3.4e38) holds it" if first.bf16_ok else "it overflows bfloat16 and float32 too"
    message = (f"`{name}` has predicted std {sig(first.std)} at init, {sig(first.std / FP16_MAX)}x float16's largest "
               f"value 65504: {_pct(first.over)} of its values overflow to inf{more}; {bf16}")
    return Issue(
        message=message,
        fix=_init_fix(graph, first, "overflow"),
        predicted={"std": first.std, "std_over_max": first.std / FP16_MAX, "overflow_fraction": first.over,
                   "later_ops": len(over) - 1, "bf16_holds": first.bf16_ok},
        severity=Severity.ERROR,
        op=first.op.name,
    )


def _underflow(graph: ModelGraph, small: list[_Range], zeros: list[_Range]) -> Issue:
    first = small[0]
    name = _name(first.op)
    # A constant (a zero-initialized layer's bias alone) has no spread: its size is its value.
    scale = first.std if first.std > 0 else math.sqrt(max(graph.signal(first.op).forward.second, 0.0))
    size = f"has predicted std {sig(scale)}" if first.std > 0 else f"is a constant of magnitude {sig(scale)}"
    below = f"{sig(FP16_TINY / scale)}x below" if scale > 0 else "below"
    message = (f"`{name}` {size} at init, {below} float16's "
               f"smallest normal value 6.1e-05: {_pct(first.small)} of its nonzero values are subnormal in float16, "
               f"with fewer significant bits")
    predicted = {"std": scale, "tiny_over_std": FP16_TINY / scale if scale > 0 else math.inf,
                 "subnormal_fraction": first.small, "bf16_holds": first.bf16_ok}
    if zeros:
        z = zeros[0]
        message += f"; from `{_name(z.op)}` (std {sig(z.std)}) {_pct(z.zero)} round to zero"
        predicted.update(zero_op=z.op.name, zero_std=z.std, zero_fraction=z.zero)
    message += "; bfloat16's range (down to 1.2e-38) holds them" if first.bf16_ok else "; so does bfloat16"
    return Issue(
        message=message,
        fix=_init_fix(graph, first, "underflow"),
        predicted=predicted,
        severity=Severity.ERROR if zeros else Severity.WARNING,
        op=first.op.name,
    )


def _gradients(graph: ModelGraph, checked: list[Op]) -> Issue | None:
    grads = []
    for op in checked:
        if op.kind is not OpKind.EMBEDDING:
            b = graph.signal(op).backward.second
            if b > 0 and math.isfinite(b):
                grads.append((math.sqrt(b), op))
    if len(grads) < 2:
        return None
    (top, big), (low, little) = max(grads, key=lambda g: g[0]), min(grads, key=lambda g: g[0])
    scale = FP16_MAX / (TAIL * top)
    fraction = _within(0.0, low * scale, FP16_TINY)
    if fraction < MOST:
        return None
    message = (f"gradients at init span {sig(top / low)}x in std, from `{_name(big)}` ({sig(top)}) to `{_name(little)}` "
               f"({sig(low)}): at the loss scale that keeps the largest finite in float16, {_pct(fraction)} of "
               f"`{_name(little)}`'s gradient values are subnormal; bfloat16's range holds both")
    return Issue(
        message=message,
        fix=Fix(summary="Train in bfloat16, whose range is float32's, or re-initialize the layers between the two "
                        "ops so their gradients stay within float16's range",
                code='with torch.autocast(device_type="cuda", dtype=torch.bfloat16):\n    loss = loss_fn(model(x), y)'),
        predicted={"largest_std": top, "smallest_std": low, "spread": top / low, "loss_scale": scale,
                   "subnormal_fraction": fraction},
        severity=Severity.WARNING,
        op=little.name,
    )


def _init_fix(graph: ModelGraph, at: _Range, what: str) -> Fix:
    lines = []
    for op in signal_path(graph, at.op):
        w = op.weight
        if op.kind not in (OpKind.LINEAR, OpKind.CONV) or w is None or w.tensor is None or not w.fan_in:
            continue
        _, g2 = nonlinearity_after(graph, op)
        std = math.sqrt(g2 / w.fan_in)
        if w.rms > 0 and abs(math.log(w.rms / std)) > math.log(2.0):
            lines.append(f'nn.init.normal_(model.get_parameter("{w.name}"), mean=0.0, std={sig(std)})  '
                         f"# now {sig(w.rms)}")
    bf16 = '# or train in bfloat16: with torch.autocast(device_type="cuda", dtype=torch.bfloat16): ...'
    if lines:
        summary = (f"Re-initialize the {len(lines)} weight layer{'s' if len(lines) > 1 else ''} leading to "
                   f"`{_name(at.op)}` that {'are' if len(lines) > 1 else 'is'} more than 2x off the "
                   f"variance-preserving std")
        return Fix(summary=summary, code="\n".join(lines + ([bf16] if at.bf16_ok else [])))
    raw = off_scale_inputs(graph, at.op)
    if raw:  # no layer to blame: the data comes in at this scale
        names = ", ".join(f"`{op.name}`" for op, _ in raw)
        code = [f"{op.name} = {op.name} / {sig(rms)}  # its rms at init: the model's input at unit scale"
                for op, rms in raw]
        return Fix(summary=f"Normalize {names} to unit scale before the model (no layer leading to "
                           f"`{_name(at.op)}` is more than 2x off), or train in bfloat16",
                   code="\n".join(code + ([bf16] if at.bf16_ok else [])))
    return Fix(summary=f"Rescale the signal before `{_name(at.op)}` (a normalization), or train in bfloat16",
               code=bf16.removeprefix("# or "))


def off_scale_inputs(graph: ModelGraph, op: Op) -> list[tuple[Op, float]]:
    """The model inputs on ``op``'s signal path whose rms is more than 2x off 1, with that rms."""
    out = []
    for o in signal_path(graph, op):
        if o.kind is OpKind.INPUT:
            second = graph.signal(o).forward.second
            if second > 0 and math.isfinite(second) and abs(math.log(second) / 2) > math.log(2.0):
                out.append((o, math.sqrt(second)))
    return out


def _name(op: Op) -> str:
    return python_path(op.module) if op.module else op.name


def _pct(fraction: float) -> str:
    if fraction >= 0.001:
        return f"{sig(100 * fraction, 3)}%"
    return f"1 in {sig(1 / fraction, 2)}" if fraction > 0 else "none"
