"""Transfer functions of the ops that are not elementwise: sources, weight layers, norms, attention, reductions.

Each is a small function ``(op, operands, ctx) -> Step``; :data:`TABLE` maps op kinds to them. The physics,
for an input of second moment ``q``, mean ``m`` and per-unit mean variance ``u``:

* Linear and conv: ``fan_in * E[W^2] * q`` plus the mean and bias terms, with the *true* fan-in (grouped and
  depthwise convs, transposed-conv phases and zero-padded borders counted from the shapes); the gradient's
  second moment is multiplied by ``fan_out * E[W^2]``.
* Norms reset the scale to their affine weight: ``E[w^2] * v / (v + eps) + E[b^2]`` (BatchNorm with batch
  statistics, as in training); the gradient is divided by the normalized variance.
* Attention and products of signals are in :mod:`initlint.attention`.
* Means, pooling and sums keep the per-unit means ``u`` and average the rest away.

>>> from initlint.estimate import Est
>>> from initlint.ops import LinearParams, Op, OpKind, WeightStats
>>> import torch
>>> w = WeightStats.of("fc.weight", torch.randn(256, 512, generator=torch.Generator().manual_seed(0)) / 512 ** 0.5,
...                    512, 256)
>>> op = Op("fc", OpKind.LINEAR, "nn.Linear", ("x",), params=LinearParams(512, 256, False), weight=w)
>>> round(_linear(op, [Est(1.0, 0.0)], None).second, 1)  # std 1/sqrt(fan_in) keeps the variance
1.0
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch

from .elementwise import base_name
from .estimate import Ctx, Est, Factor, Step, numel
from .fans import conv_fans
from .gains import (DTYPE, NODES, Rule, bernoulli, compress, compressed_gaussian, gamma, gaussian, interpolate, max_of,
                    mixture, point, uniform)
from .ops import NormKind, Op, OpKind, PoolKind, RandomDist, Reduction


def empirical(t: torch.Tensor | None) -> Rule | None:
    """The distribution of a tensor's values, as NODES equally weighted quantiles: the ``(k + 1/2) n / NODES``-th
    smallest of its ``n`` values, ``k < NODES`` (all of them when ``n <= NODES``). That index is computed in
    integers, ``floor((2k + 1) n / (2 NODES))``: what float64 arithmetic gives too (the quotient is an integer
    or at least ``1/(2 NODES)`` away from one)."""
    if t is None or t.is_meta or t.numel() == 0 or t.is_complex():
        return None
    flat = t.detach().reshape(-1).to("cpu")
    values = _by_numpy(flat)
    if values is None:
        values = _sorted(flat)
        n = values.numel()
        if n > NODES:
            values = values[torch.arange(1, 2 * NODES, 2).mul_(n).floor_divide_(2 * NODES)]
        values = values.to(DTYPE)
    return Rule(values, torch.full(values.shape, 1.0 / values.numel(), dtype=DTYPE))


_INTEGERS = frozenset({torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8})
_BITS = {torch.float64: (torch.int64, 63, 0x7FFFFFFFFFFFFFFF), torch.float32: (torch.int32, 31, 0x7FFFFFFF)}
_BY_NUMPY = _INTEGERS | {torch.float64, torch.float32}


def _by_numpy(flat: torch.Tensor) -> torch.Tensor | None:
    """:func:`empirical`'s values sorted, picked and made float64 by numpy, where torch has loaded it (it does
    when numpy is installed; initlint does not need it): its vectorized sort takes a tenth of torch's on one
    thread (30 us against 350 for a 2x3x32x32 image), and its picking and conversion a few microseconds. NaNs
    go last, as in torch. None for dtypes numpy does not take and for floats with zeros, whose signs a sort
    may place either way: :func:`_sorted` orders those as torch does."""
    np = _numpy()
    if np is None or flat.dtype not in _BY_NUMPY:
        return None
    a = flat.numpy()
    if flat.dtype not in _INTEGERS and not a.all():  # a zero (a NaN is true)
        return None
    a = np.sort(a)
    if a.size > NODES:
        a = a[np.arange(1, 2 * NODES, 2) * a.size // (2 * NODES)]
    return torch.from_numpy(a.astype(np.float64))


def _sorted(flat: torch.Tensor) -> torch.Tensor:
    """``flat`` in ascending order, in its own dtype (a conversion to float64 after the sort gives the values a
    conversion before it would: it keeps order). Floats are sorted by their bits as integers, flipped for
    negative numbers so that the integers' order is the floats' (torch sorts integers by radix, 1.5-10x faster
    than floats of the same width), unless there are NaNs or zeros, whose places and signs follow torch's own
    float sort."""
    if flat.dtype in _INTEGERS:
        return flat.sort().values
    bits = _BITS.get(flat.dtype)
    if bits is None or bool(torch.isnan(flat).any()) or bool((flat == 0).any()):
        return flat.sort().values
    itype, shift, mask = bits
    b = flat.contiguous().view(itype)
    s = (b ^ ((b >> shift) & mask)).sort().values
    return (s ^ ((s >> shift) & mask)).view(flat.dtype)


def _numpy():
    """numpy, when torch has imported it (it does where numpy is installed), else None."""
    return sys.modules.get("numpy")


# -- sources -----------------------------------------------------------------------------------------------


def unit_variance(t: torch.Tensor | None, dim: int = -1) -> float:
    """Variance across ``dim`` (the units) of the means over every other dimension."""
    if t is None or t.is_meta or t.numel() == 0 or t.dim() == 0 or t.is_complex():
        return 0.0
    x = t.detach().to("cpu", DTYPE)
    others = [d for d in range(x.dim()) if d != dim % x.dim()]
    means = x.mean(others) if others else x  # in place: no copy of the tensor with the units last
    return float(means.var(unbiased=False)) if means.numel() > 1 else 0.0


def _param(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    w = op.weight
    if w is None:
        return None
    return Step(w.second_moment, w.mean, unit_variance(w.tensor), rule=empirical(w.tensor))


def _factory(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    name, n = base_name(op.target), op.numel
    if name.startswith(("zeros", "new_zeros")):
        return Step(0.0, 0.0, rule=point(0.0))
    if name.startswith(("ones", "new_ones")):
        return Step(1.0, 1.0, rule=point(1.0))
    if name == "arange" and n:  # arange(n): the capture keeps no start or step
        rule = empirical(torch.arange(n, dtype=DTYPE))
        return Step((n - 1) * (2 * n - 1) / 6, (n - 1) / 2, rule=rule)
    return None  # full, empty, tensor(...): the value is not captured


def _random(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    dist = op.params.dist
    if "randint" in op.target:
        return None
    if dist is RandomDist.NORMAL:
        return Step(1.0, 0.0, rule=gaussian(0.0, 1.0))
    if dist is RandomDist.BERNOULLI:
        p = 0.5 if op.params.p is None else op.params.p
        return Step(p, p, rule=bernoulli(p))
    return Step(1.0 / 3.0, 0.5, rule=uniform(0.0, 1.0))


def _embedding(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    """The rows the ids pick: with the ids' distribution known (example inputs, position ids, a buffer of
    zeros for token types) the statistics of exactly those rows, else of the whole table."""
    w = op.weight
    if w is None:
        return None
    grads = (None,) * len(ins)
    t = w.tensor
    if not ins or t is None or t.is_meta or t.dim() != 2:
        return Step(w.second_moment, w.mean, rule=empirical(t), grads=grads)
    table = t.detach().to("cpu", DTYPE)
    rule = ctx.rule(ins[0])
    ids = ins[0].values.round().long().clamp(0, table.shape[0] - 1)
    rows = table[ids]  # (nodes, dim)
    mean_row = (rule.weights[:, None] * rows).sum(0)
    second = float((rule.weights * rows.square().mean(1)).sum())
    return Step(second, float(mean_row.mean()), float(mean_row.var(unbiased=False)), grads=grads)


# -- weight layers -----------------------------------------------------------------------------------------


def _affine(op: Op, x: Est, fan_in: float, fan_out: float, channels_first: bool = False,
            offset_fan: float | None = None) -> Step:
    """``offset_fan``: how many input means add up into an output unit's mean (see :func:`conv_fans`)."""
    w, b = op.weight, op.bias
    w2, mw, vw = w.second_moment, w.mean, w.variance
    second = fan_in * w2 * x.second + fan_in * (fan_in - 1) * mw * mw * x.mean * x.mean
    mean = fan_in * mw * x.mean
    unit = (fan_in if offset_fan is None else offset_fan) * (w2 * x.unit + vw * x.mean * x.mean)
    if b is not None:
        second += b.second_moment + 2 * b.mean * mean
        mean += b.mean
        unit += b.variance
    return Step(second, mean, min(unit, max(second - mean * mean, 0.0)), grads=(Factor(fan_out * w2),),
                channels_first=channels_first)


def _linear(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    if op.weight is None:
        return None
    return _affine(op, ins[0], op.weight.fan_in, op.weight.fan_out)


def _conv(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    if op.weight is None:
        return None
    fan_in, fan_out, offset_fan = conv_fans(op.params, ins[0].shape, op.shape) or (
        op.weight.fan_in, op.weight.fan_out, None)
    return _affine(op, ins[0], fan_in, fan_out, channels_first=True, offset_fan=offset_fan)


def _norm_count(op: Op, x: Est) -> int:
    """How many elements are normalized together."""
    p, shape = op.params, x.shape or ()
    n = numel(shape) or 1
    if p.kind is NormKind.BATCH:
        return n // shape[1] if len(shape) >= 2 else n
    if p.kind in (NormKind.LAYER, NormKind.RMS):
        return math.prod(p.normalized_shape) if p.normalized_shape else (shape[-1] if shape else 1)
    if p.kind is NormKind.GROUP and len(shape) >= 2:
        return n // (shape[0] * (p.num_groups or 1))
    if p.kind is NormKind.INSTANCE and len(shape) >= 2:
        return n // (shape[0] * shape[1])
    return n


def _norm(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    p, x = op.params, ins[0]
    if p.kind is NormKind.LOCAL_RESPONSE:
        return Step(x.second, x.mean, x.unit, grads=(Factor(1.0),))
    w2 = (1.0 if p.weight_rms is None else p.weight_rms) ** 2
    mw = op.weight.mean if op.weight is not None else 1.0
    b2 = (p.bias_rms or 0.0) ** 2
    mb, vb = (op.bias.mean, op.bias.variance) if op.bias is not None else (0.0, 0.0)
    batch_stats = p.uses_batch_stats or (ctx.training and op.target.startswith("nn."))
    row_gains: tuple[float, ...] = ()
    if p.kind is NormKind.BATCH and not batch_stats:  # running statistics: assumed fresh (mean 0, var 1)
        z2, zm, back = x.second / (1 + p.eps), x.mean / math.sqrt(1 + p.eps), 1.0 / (1 + p.eps)
        unit = x.unit
    else:
        count = max(_norm_count(op, x), 1)
        var = x.second if p.kind is NormKind.RMS else x.variance
        if p.kind in (NormKind.BATCH, NormKind.INSTANCE):  # per-channel means are removed, not normalized
            var = max(var - x.unit, 0.0)
        z2 = var / (var + p.eps) if var > 0 else 0.0
        zm = x.mean / math.sqrt(var + p.eps) if p.kind is NormKind.RMS else 0.0
        lost = 1.0 if p.kind is NormKind.RMS else 2.0  # directions the normalization removes
        back = max(1.0 - lost / count, 0.0) / (var + p.eps)
        row_gains: tuple[float, ...] = ()
        if x.rows and p.kind in (NormKind.LAYER, NormKind.RMS):  # each row divided by its own scale
            share = var / x.second if x.second > 0 else 1.0
            row_gains = tuple(max(1.0 - lost / count, 0.0) / (s * share + p.eps) for _, s in x.rows)
            back = sum(f * r for (f, _), r in zip(x.rows, row_gains))
        unit = 0.0
        if p.kind in (NormKind.LAYER, NormKind.RMS):
            unit = x.unit / (var + p.eps)
        elif p.kind is NormKind.GROUP and p.num_groups and p.num_features:
            # Each group's mean takes 1/(channels per group) of its channels' offsets; the rest stay, in units
            # of the group's std: a spatial mean after GroupNorm sees them.
            per_group = p.num_features / p.num_groups
            unit = min(x.unit, var) * max(1.0 - 1.0 / per_group, 0.0) / (var + p.eps)
    second = w2 * z2 + b2 + 2 * mw * mb * zm
    mean = mw * zm + mb
    cf = x.channels_first or (p.kind is not NormKind.LAYER and p.kind is not NormKind.RMS and x.rank >= 3)
    return Step(second, mean, min(w2 * unit + vb, max(second - mean * mean, 0.0)),
                grads=(Factor(w2 * back),), channels_first=cf, row_gains=row_gains)


# -- layout ------------------------------------------------------------------------------------------------


def _concat(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    sizes = list(op.params.sizes) if len(op.params.sizes) == len(ins) else []
    if not sizes or not sum(sizes):
        sizes = [e.numel or 1 for e in ins]
    total = float(sum(sizes))
    frac = [s / total for s in sizes]
    rule = mixture([(ctx.rule(e), e.values, f) for e, f in zip(ins, frac)])
    second = sum(f * e.second for f, e in zip(frac, ins))
    mean = sum(f * e.mean for f, e in zip(frac, ins))
    unit = sum(f * e.unit for f, e in zip(frac, ins))
    rank = ins[0].rank
    rows = None
    if rank and op.params.dim % rank == ins[0].unit_dim and not op.params.stack:  # parts are different units
        unit += sum(f * (e.mean - mean) ** 2 for f, e in zip(frac, ins))
    else:  # parts are different rows: a norm over units sees each part's own scale
        rows = tuple((f * rf, rs) for f, e in zip(frac, ins) for rf, rs in (e.rows or ((1.0, e.second),)))
    parts = tuple(len(e.rows or ((1.0, e.second),)) for e in ins) if rows else ()
    return Step(second, mean, unit, rule=rule, grads=tuple(Factor(1.0) for _ in ins), rows=rows, row_parts=parts)


def _window(op: Op, x: Est) -> int:
    """Elements per pooling window (an int kernel size stands for every spatial dimension)."""
    p = op.params
    given = p.output_size if p.kind in (PoolKind.ADAPTIVE_AVG, PoolKind.ADAPTIVE_MAX) else p.kernel_size
    dims = len(given) if len(given) > 1 else max(x.rank - 2, 1)
    if p.kind in (PoolKind.ADAPTIVE_AVG, PoolKind.ADAPTIVE_MAX):
        if not x.shape or not op.shape:
            return 1
        return max(1, math.prod(math.ceil(a / max(b, 1)) for a, b in zip(x.shape[-dims:], op.shape[-dims:])))
    return max(1, math.prod(p.kernel_size) if len(p.kernel_size) > 1 else p.kernel_size[0] ** dims)


def _pool(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    x, kind = ins[0], op.params.kind
    k = _window(op, x)
    ratio = op.numel / x.numel if op.numel and x.numel else 1.0 / k
    if kind in (PoolKind.MAX, PoolKind.ADAPTIVE_MAX):
        rule = _max_within_units(ctx, x, k) or max_of(ctx.rule(x), x.values, k)
        m = rule.moments(rule.nodes)
        return Step(m.second, m.mean, x.unit, rule=rule, own=True, channels_first=True,
                    grads=(Factor(ratio, _argmax_weights(ctx.rule(x), x.values, k)),))
    u = min(x.unit, x.variance)
    return Step(x.mean**2 + u + (x.variance - u) / k, x.mean, u, grads=(Factor(ratio / k),), channels_first=True)


def _argmax_weights(rule: Rule, values: torch.Tensor, k: int) -> torch.Tensor:
    """How much of a max pool's gradient an input of each value receives, relative to the average: it goes
    to the window's largest value, so to a value ``v`` with probability ``F(v)^(k-1)`` (ties shared)."""
    order = torch.argsort(values)
    v, w = values[order], rule.weights[order]
    _, group, counts = torch.unique_consecutive(v, return_inverse=True, return_counts=True)
    mass = torch.zeros(len(counts), dtype=DTYPE).index_add_(0, group, w)
    upper = torch.cumsum(mass, 0).clamp(max=1.0)
    lower = upper - mass
    per_group = (upper**k - lower**k) / mass.clamp(min=1e-300)  # P(chosen | value) * k, ties shared
    out = torch.empty_like(values)
    out[order] = per_group[group]
    return out / max(float((rule.weights * out).sum()), 1e-300)


def _max_within_units(ctx: Ctx, x: Est, k: int) -> Rule | None:
    """The largest of ``k`` values of one unit (a pooling window of one channel), for a monotone function
    ``f`` of a Gaussian source ``z = c + e``: the unit's offset ``c`` is shared, so the window's largest value
    is ``f(c + max_k e)``, not the largest of ``k`` independent draws."""
    src = ctx.rules[x.source]
    u, var = ctx.source_est(x).unit, ctx.source_est(x).variance
    if not src.gaussian or u <= 0 or var <= u or bool((x.values[1:] < x.values[:-1] - 1e-12).any()):
        return None
    mean = ctx.source_est(x).mean
    coarse = compressed_gaussian(0.0, var - u, 64, k)  # the largest of k within the unit
    offset = compressed_gaussian(mean, u, 64)
    z = (offset.nodes[:, None] + coarse.nodes[None, :]).reshape(-1)
    w = (offset.weights[:, None] * coarse.weights[None, :]).reshape(-1)
    return compress(interpolate(z, src.nodes, x.values, src.spaced), w)


def _over_units(op: Op, x: Est) -> bool:
    dims = op.params.dims
    return not dims or not x.rank or x.unit_dim in {d % x.rank for d in dims}


def _over_stack(op: Op, ctx: Ctx) -> bool:
    """Whether ``op`` reduces exactly over the new dimension of a ``torch.stack`` of distinct tensors: the
    offsets they share along the other dimensions (a channel's mean over the batch) are theirs alone, not
    common to the reduced values as they are along a tensor's own dimensions."""
    src = ctx.graph.op(op.inputs[0])
    p = src.params
    if src.kind is not OpKind.CONCAT or p is None or not p.stack or not src.shape or not op.params.dims:
        return False
    rank = len(src.shape)
    return {d % rank for d in op.params.dims} == {p.dim % rank} and len(set(src.inputs)) == len(src.inputs)


def _normalized_away(op: Op, ctx: Ctx) -> tuple[float, float] | None:
    """``(mean, variance across channels)`` of the bias, when ``op`` averages an InstanceNorm's output (or a
    GroupNorm's of one channel per group) over exactly the dimensions it normalized: each sample's channel
    mean there is zero before the affine, so the average is the channel's bias, whatever the input."""
    src = ctx.graph.op(op.inputs[0])
    p = src.params
    if src.kind is not OpKind.NORM or p is None or not src.shape or len(src.shape) < 3 or not op.params.dims:
        return None
    per_channel = p.kind is NormKind.INSTANCE or (p.kind is NormKind.GROUP and p.num_groups == p.num_features)
    rank = len(src.shape)
    if not per_channel or {d % rank for d in op.params.dims} != set(range(2, rank)):
        return None
    return (src.bias.mean, src.bias.variance) if src.bias is not None else (0.0, 0.0)


def _reduce(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    x, kind = ins[0], op.params.kind
    n = op.params.count or (x.numel // op.numel if x.numel and op.numel else None)
    if not n:
        return None
    nonneg = bool((x.values >= 0).all())
    u = 0.0 if _over_units(op, x) else min(x.unit, x.variance)
    var = u + (x.variance - u) / n  # of the mean
    if _over_stack(op, ctx):  # `torch.stack(branches).sum(0)`: each branch has its own per-unit offsets
        u = min(x.unit, x.variance) / n
        var = x.variance / n
    if kind in (Reduction.MEAN, Reduction.SUM):
        c = 1.0 if kind is Reduction.MEAN else float(n)
        exact = _normalized_away(op, ctx)
        if exact is not None:  # the norm made this mean exactly its bias: a constant per channel
            mb, vb = exact
            return Step(c * c * (mb * mb + vb), c * mb, c * c * vb, rule=gaussian(c * mb, c * c * vb),
                        grads=(Factor((c / n) ** 2),))
        rule = (gamma if nonneg else gaussian)(c * x.mean, c * c * var)
        return Step(c * c * (x.mean**2 + var), c * x.mean, c * c * u, rule=rule, grads=(Factor((c / n) ** 2),))
    if kind in (Reduction.MAX, Reduction.MIN):
        sign = 1.0 if kind is Reduction.MAX else -1.0
        rule = max_of(ctx.rule(x), sign * x.values, n)
        rule = Rule(sign * rule.nodes, rule.weights)
        m = rule.moments(rule.nodes)
        return Step(m.second, m.mean, rule=rule, own=True, grads=(Factor(1.0 / n),))
    if kind is Reduction.NORM:
        s = n * x.second
        return Step(s, math.sqrt(s), rule=point(math.sqrt(s)), grads=(Factor(1.0 / n),))
    if kind is Reduction.VAR:
        return Step(x.variance**2 * (1 + 2 / n), x.variance, rule=point(x.variance),
                    grads=(Factor(4 * x.variance / n**2),))
    if kind is Reduction.STD:
        return Step(x.variance, math.sqrt(x.variance), rule=point(math.sqrt(x.variance)), grads=(Factor(1.0 / n),))
    return None


TABLE = {
    OpKind.PARAM: _param,
    OpKind.FACTORY: _factory,
    OpKind.RANDOM: _random,
    OpKind.EMBEDDING: _embedding,
    OpKind.LINEAR: _linear,
    OpKind.CONV: _conv,
    OpKind.NORM: _norm,
    OpKind.CONCAT: _concat,
    OpKind.POOL: _pool,
    OpKind.REDUCE: _reduce,
}

__all__ = ["TABLE", "empirical", "unit_variance"]
