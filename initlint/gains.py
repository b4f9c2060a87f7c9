"""Expectations under the distributions the variance engine assumes, and the activation gains built on them.

A signal entering a nonlinearity is modelled as a distribution over a fixed grid of nodes (a :class:`Rule`):
a Gaussian of the predicted mean and variance by default, a Gamma for nonnegative reductions (mean of
squares), a uniform or Bernoulli for random tensors, or any discrete mixture (dropout, concat). Expectations
are weighted sums over the nodes: trapezoid weights on +-8 standard deviations, exact to about 1e-4 for
kinked functions (ReLU) and to machine precision for smooth ones.

The gains of an activation are not constants: tanh and sigmoid depend on the input variance, GELU and SiLU on
both mean and variance. :func:`activation_gain` returns the forward second moment and mean of ``f(x)`` and
the backward gain ``E[f'(x)^2]`` for ``x ~ N(mean, variance)``.

>>> from initlint.ops import Activation, ActivationParams
>>> g = activation_gain(ActivationParams(Activation.RELU), Moments(2.0))
>>> round(g.forward.second, 4), round(g.forward.mean, 4), round(g.backward, 4)
(1.0, 0.5642, 0.5)
>>> round(activation_gain(ActivationParams(Activation.TANH), Moments(1.0)).forward.second, 3)
0.394
>>> round(activation_gain(ActivationParams(Activation.TANH), Moments(0.01)).forward.second, 5)
0.00981
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .graph import Moments
from .ops import Activation, ActivationParams

NODES = 400  # grid size: cheap (microseconds per op), ~1e-4 on kinks; even, so no node sits on a kink at 0
SPAN = 8.0  # the Gaussian grid covers +-SPAN standard deviations (mass outside: 1e-15)
DTYPE = torch.float64

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """A distribution as nodes and weights summing to one: ``E[f(X)] = sum(weights * f(nodes))``."""

    nodes: torch.Tensor
    weights: torch.Tensor
    gaussian: bool = False  # nodes are the sorted Gaussian grid of ``gaussian(mean, variance)``
    spaced: bool = False  # nodes are evenly spaced, to rounding (:func:`interpolate` finds a node by arithmetic)

    def expect(self, values: torch.Tensor) -> float:
        w = self.weights
        if values.shape == w.shape and values.dtype == w.dtype:  # a dot product: no product to allocate
            return float(torch.dot(w, values))
        return float((w * values).sum())

    def moments(self, values: torch.Tensor) -> Moments:
        w = self.weights
        if values.shape == w.shape and values.dtype == w.dtype:
            return Moments(float(torch.dot(w, values * values)), float(torch.dot(w, values)))
        return Moments(self.expect(values * values), self.expect(values))

    def second(self, values: torch.Tensor | float) -> float:
        if not isinstance(values, torch.Tensor):
            return float(values) ** 2
        return self.expect(values * values)


def _make_standard() -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.linspace(-SPAN, SPAN, NODES, dtype=DTYPE)
    w = torch.exp(-0.5 * t * t)
    return t, w / w.sum()


# The standard grid and the tables below are made once, at import (a few hundred microseconds in all, against the
# second and a half that importing torch takes), not in every lint: most lints need them. Nothing writes into them.
_STANDARD = _make_standard()


def _standard() -> tuple[torch.Tensor, torch.Tensor]:
    """The standard Gaussian grid: nodes ``t`` on [-8, 8] and weights ``w`` summing to one."""
    return _STANDARD


def gaussian(mean: float, variance: float) -> Rule:
    """``N(mean, variance)``."""
    t, w = _standard()
    std = math.sqrt(max(variance, 0.0))
    if mean == 0.0 and std > 1e-290:  # adding zero changes no node (none is zero: NODES is even)
        return Rule(t.mul(std), w, True, True)
    return Rule(t.mul(std).add_(mean), w, True, _spaced(mean, std))


def unread_gaussian() -> Rule:
    """:func:`gaussian`'s rule for a source whose values no consumer reads: its weights and no nodes (making
    them is most of what a new source costs)."""
    return Rule(None, _STANDARD[1], True)


def _spaced(mean: float, std: float) -> bool:
    """Whether ``mean + std * t`` keeps the standard grid's even spacing to rounding: a spread far below the
    mean's own rounding would quantize the nodes."""
    return std > 1e-3 * abs(mean) and std > 1e-290


def gamma(mean: float, variance: float) -> Rule:
    """A nonnegative variable of the given mean and variance (Gamma, by the Wilson-Hilferty transform).

    Means of squares (hand-written RMSNorm, ``x.pow(2).mean(-1)``) are chi-square, not Gaussian: a Gaussian
    grid would put mass below zero, where ``rsqrt`` explodes.
    """
    if mean <= 0 or variance <= 0:
        return point(max(mean, 0.0))
    t, w = _standard()
    a = variance / (9.0 * mean * mean)  # 1 / (9 k) for shape k = mean^2 / variance
    nodes = mean * torch.clamp(1.0 - a + t * math.sqrt(a), min=0.0) ** 3
    nodes = nodes * (mean / float((w * nodes).sum()))  # exact mean
    return Rule(nodes, w)


def uniform(low: float = 0.0, high: float = 1.0) -> Rule:
    """``U[low, high)`` by the midpoint rule (exact for thresholds on a 1/NODES lattice)."""
    t = (torch.arange(NODES, dtype=DTYPE) + 0.5) / NODES
    return Rule(low + (high - low) * t, torch.full((NODES,), 1.0 / NODES, dtype=DTYPE))


def bernoulli(p: float) -> Rule:
    return Rule(torch.tensor([0.0, 1.0], dtype=DTYPE), torch.tensor([1.0 - p, p], dtype=DTYPE))


def point(value: float) -> Rule:
    return Rule(torch.tensor([float(value)], dtype=DTYPE), torch.ones(1, dtype=DTYPE))


def mixture(parts: list[tuple[Rule, torch.Tensor, float]]) -> Rule:
    """The distribution of a tensor made of parts ``(rule, values, fraction)`` (concat, dropout's zeros)."""
    nodes = torch.cat([v.expand_as(r.weights) if v.dim() else v.expand(r.weights.shape) for r, v, _ in parts])
    weights = torch.cat([r.weights * f for r, _, f in parts])
    return Rule(nodes, weights / weights.sum())


def max_of(rule: Rule, values: torch.Tensor, k: int) -> Rule:
    """The distribution of the largest of ``k`` independent draws of ``values`` under ``rule``."""
    order = torch.argsort(values)
    v, w = values[order], rule.weights[order]
    cdf = torch.cumsum(w, 0).clamp(max=1.0)
    below = torch.cat([torch.zeros(1, dtype=DTYPE), cdf[:-1]])
    return Rule(v, cdf**k - below**k)


def matched(rule: Rule, mean: float, second: float) -> Rule:
    """``rule`` shifted and scaled to have exactly this mean and second moment (a sample's quantiles have
    its shape but not quite its moments), so that ``x + x`` on the grid is exactly four times ``E[x^2]``."""
    m = rule.moments(rule.nodes)
    var, target = m.second - m.mean * m.mean, second - mean * mean
    if var <= 0 or target < 0 or not math.isfinite(target):
        return rule
    nodes = mean + (rule.nodes - m.mean) * math.sqrt(target / var)
    spaced = rule.spaced and _spaced(mean, math.sqrt(target))
    if mean >= 0 and bool((rule.nodes >= 0).all()) and bool((nodes < 0).any()):
        # A nonnegative variable (a mean of squares) stays nonnegative: stretching its grid to the exact
        # variance must not push its lowest nodes below zero, where rsqrt and log explode. Clamp them and keep
        # the mean exact; the variance loses what the clamped nodes carried.
        nodes = nodes.clamp(min=0.0)
        total = float((rule.weights * nodes).sum())
        if total > 0:
            nodes = nodes * (mean / total)
        spaced = False
    return Rule(nodes, rule.weights, rule.gaussian, spaced)


def compress(nodes: torch.Tensor, weights: torch.Tensor, size: int = NODES) -> Rule:
    """A rule of at most ``size`` nodes with the same distribution: equal-mass quantiles of the sorted nodes."""
    if nodes.numel() <= size:
        return Rule(nodes, weights / weights.sum())
    order = torch.argsort(nodes)
    v, cdf = nodes[order], torch.cumsum(weights[order], 0) / weights.sum()
    idx = torch.searchsorted(cdf, (torch.arange(size, dtype=DTYPE) + 0.5) / size).clamp(max=v.numel() - 1)
    return Rule(v[idx], torch.full((size,), 1.0 / size, dtype=DTYPE))


def _standard_compressed(size: int, k: int | None) -> Rule:
    if size == _OFFSET_NODES and k is None:
        return _COMPRESSED
    return _compressed(size, k)


@lru_cache(maxsize=8)
def _compressed(size: int, k: int | None) -> Rule:
    t, w = _standard()
    rule = Rule(t, w) if k is None else max_of(Rule(t, w), t, k)
    return compress(rule.nodes, rule.weights, size)


_OFFSET_NODES = 48  # the size of propagate._unit_of's integrals over per-unit offsets, which most lints need
_COMPRESSED = _compressed.__wrapped__(_OFFSET_NODES, None)


def compressed_gaussian(mean: float, variance: float, size: int, k: int | None = None) -> Rule:
    """``compress(gaussian(mean, variance), size)``, or with ``k`` the compressed distribution of the largest
    of ``k`` draws (``max_of``), node for node: the Gaussian grid is the standard one shifted and scaled, which
    keeps its order, so the quantiles of the standard grid, computed once, shifted and scaled."""
    c = _standard_compressed(size, k)
    std = math.sqrt(max(variance, 0.0))
    return Rule(std * c.nodes if mean == 0.0 and std > 1e-290 else mean + std * c.nodes, c.weights)


def interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor, spaced: bool = False) -> torch.Tensor:
    """Piecewise-linear ``f(x)`` from samples ``fp`` at increasing ``xp``, constant beyond the ends. ``spaced``:
    ``xp`` is evenly spaced (a :class:`Rule`'s ``spaced``), so a point's segment and its place in it are
    arithmetic, not a binary search (the same values to rounding: a point within rounding of a node may take
    the segment on its other side, where the interpolant is the same)."""
    n = xp.numel()
    if spaced and n > 2:
        lo, hi = xp[::n - 1].tolist()
        if hi > lo:
            pos = (x - lo).mul_((n - 1) / (hi - lo)).clamp_(0.0, n - 1)
            left = pos.floor().clamp_(max=n - 2)
            frac = pos.sub_(left)
            i = left.long()
            f0 = fp.take(i)
            return fp.take(i.add_(1)).sub_(f0).mul_(frac).add_(f0)
    i = torch.searchsorted(xp, x).clamp_(1, n - 1)
    j = i - 1
    x0, f0 = xp.take(j), fp.take(j)
    dx = xp.take(i).sub_(x0)
    t = (x - x0).div_(dx.masked_fill_(dx <= 0, 1.0)).clamp_(0.0, 1.0)
    return fp.take(i).sub_(f0).mul_(t).add_(f0)


# -- activations -------------------------------------------------------------------------------------------


def _negative_slope(p: ActivationParams) -> float:
    """The leaky family's slope below zero (nn.LeakyReLU's default 0.01)."""
    return 0.01 if p.negative_slope is None else p.negative_slope


def _lo(p: ActivationParams) -> float:
    """Hardtanh's lower bound (default -1)."""
    return -1.0 if p.min_val is None else p.min_val


def _hi(p: ActivationParams) -> float:
    """Hardtanh's upper bound (default 1)."""
    return 1.0 if p.max_val is None else p.max_val


def _leaky(p: ActivationParams) -> Fn:
    slope = _negative_slope(p)
    return lambda x: F.leaky_relu(x, slope)


_RRELU_SLOPE = (1.0 / 8 + 1.0 / 3) / 2  # nn.RReLU's default U[1/8, 1/3] slope, at its mean

_ACTIVATIONS: dict[Activation, Callable[[ActivationParams], Fn]] = {
    Activation.RELU: lambda p: F.relu,
    Activation.RELU6: lambda p: F.relu6,
    Activation.LEAKY_RELU: _leaky,
    Activation.PRELU: _leaky,
    Activation.RRELU: lambda p: (lambda x: F.leaky_relu(x, _RRELU_SLOPE)),
    Activation.ELU: lambda p: (lambda x: F.elu(x, 1.0 if p.alpha is None else p.alpha)),
    Activation.CELU: lambda p: (lambda x: F.celu(x, 1.0 if p.alpha is None else p.alpha)),
    Activation.SELU: lambda p: F.selu,
    Activation.GELU: lambda p: (lambda x: F.gelu(x, approximate=p.approximate or "none")),
    Activation.SILU: lambda p: F.silu,
    Activation.MISH: lambda p: F.mish,
    Activation.SOFTPLUS: lambda p: (lambda x: F.softplus(x, p.beta or 1.0, p.threshold or 20.0)),
    Activation.TANH: lambda p: torch.tanh,
    Activation.SIGMOID: lambda p: torch.sigmoid,
    Activation.HARDTANH: lambda p: (lambda x: F.hardtanh(x, _lo(p), _hi(p))),
    Activation.HARDSIGMOID: lambda p: F.hardsigmoid,
    Activation.HARDSWISH: lambda p: F.hardswish,
    Activation.SOFTSIGN: lambda p: F.softsign,
    Activation.TANHSHRINK: lambda p: F.tanhshrink,
    Activation.LOGSIGMOID: lambda p: F.logsigmoid,
    Activation.IDENTITY: lambda p: (lambda x: x),
}


def activation(params: ActivationParams) -> Fn:
    """The elementwise function of an activation op, as PyTorch computes it."""
    return _ACTIVATIONS[params.fn](params)


# Slopes in closed form for the common activations, as PyTorch's backward computes them: autograd costs a
# backward pass per call (100 us), paid at every activation of every model and again by the rules.
_SLOPES: dict[Activation, Callable[[ActivationParams, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    Activation.RELU: lambda p, x, y: x.gt(0).to(x.dtype),
    Activation.RELU6: lambda p, x, y: x.gt(0).logical_and_(x.lt(6)).to(x.dtype),  # hardtanh_backward's mask
    Activation.HARDTANH: lambda p, x, y: ((x > _lo(p)) & (x < _hi(p))).to(x.dtype),
    Activation.TANH: lambda p, x, y: 1 - y * y,
    Activation.SIGMOID: lambda p, x, y: (1 - y) * y,
    Activation.IDENTITY: lambda p, x, y: torch.ones_like(x),
}
# Closed forms of PyTorch's backward formulas whose values equal autograd's to rounding, not always bit for bit
# (the leaky family's do): the variance engine's expectations take them (``rounded=True``); the rules' lattice
# searches keep the slopes above, which their tests compare with autograd's bit for bit.
_ROUNDED_SLOPES: dict[Activation, Callable[[ActivationParams, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    **_SLOPES,
    Activation.LEAKY_RELU: lambda p, x, y: _leaky_slope(x, _negative_slope(p)),
    Activation.PRELU: lambda p, x, y: _leaky_slope(x, _negative_slope(p)),
    Activation.RRELU: lambda p, x, y: _leaky_slope(x, _RRELU_SLOPE),
    Activation.GELU: lambda p, x, y: _gelu_slope(x, p.approximate or "none"),
    Activation.SILU: lambda p, x, y: _silu_slope(x),
}


def _gelu_slope(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """GELU's slope as PyTorch's ``gelu_backward`` computes it (``torch/_decomp/decompositions.py``)."""
    if approximate == "tanh":
        beta, kappa = math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5, 0.044715
        x2 = x * x
        th = torch.tanh(beta * (x + kappa * (x2 * x)))
        return 0.5 * (1 + th) + (0.5 * x) * (1 - th * th) * (beta * (1 + 3 * kappa * x2))
    beta = (2.0 / math.sqrt(math.pi)) * math.sqrt(0.5) * 0.5
    return 0.5 * (1 + torch.erf(x * math.sqrt(0.5))) + x * (beta * torch.exp(x * x * -0.5))


def _leaky_slope(x: torch.Tensor, slope: float) -> torch.Tensor:
    return torch.full_like(x, slope).masked_fill_(x > 0, 1.0)


def _silu_slope(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))
# Those of them that equal autograd's slopes bit for bit (masks of zeros and ones), for callers that must.
_EXACT_SLOPES = frozenset({Activation.RELU, Activation.RELU6, Activation.HARDTANH, Activation.IDENTITY})


def activation_with_derivative(params: ActivationParams, x: torch.Tensor, bit_exact: bool = False,
                               rounded: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """An activation's values and slopes at every node: in closed form where :data:`_SLOPES` has it, else by
    autograd. ``bit_exact``: closed forms only where they equal autograd's bit for bit (:data:`_EXACT_SLOPES`),
    for callers whose thresholds must not move by a rounding. ``rounded``: also those of
    :data:`_ROUNDED_SLOPES` (GELU, SiLU, the leaky family), for expectations."""
    table = _EXACT_SLOPES if bit_exact else _ROUNDED_SLOPES if rounded else _SLOPES
    if params.fn not in table:
        return with_derivative(activation(params), x)
    x = x.detach()
    y = activation(params)(x)
    return y, _ROUNDED_SLOPES[params.fn](params, x, y)


def with_derivative(fn: Fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(x)`` and ``fn'(x)`` at every node (by autograd, so every PyTorch function has its exact slope)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
        (d,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    return y.detach(), torch.zeros_like(x) if d is None else d.detach()


@dataclass(frozen=True)
class Gain:
    forward: Moments  # of f(x)
    backward: float  # E[f'(x)^2]: what the gradient's second moment is multiplied by
    slope: float = 0.0  # E[f'(x)]: what a small offset of x becomes


def activation_gain(params: ActivationParams, x: Moments) -> Gain:
    """Gains of an activation for ``x ~ N(x.mean, x.variance)``: the nodes of :func:`gaussian` and every
    expectation in one matrix-vector product (a torch call costs microseconds, about what the arithmetic on 400
    nodes costs); for the piecewise-linear ones, sums over the pieces' runs of nodes (:func:`_piecewise_gain`)."""
    gain = _piecewise_gain(params, x)
    if gain is not None:
        return gain
    t, w = _standard()
    y, d = activation_with_derivative(params, x.mean + math.sqrt(max(x.variance, 0.0)) * t, rounded=True)
    e = torch.mv(torch.stack((y * y, y, d * d, d)), w).tolist()
    return Gain(Moments(e[0], e[1]), e[2], e[3])


# The piecewise-linear activations as (lo, hi, low slope, low value, high value): ``f(x) = x`` for lo < x < hi,
# ``low slope * x + low value`` at and below lo, ``high value`` at and above hi (slope 0).
_PIECES: dict[Activation, Callable[[ActivationParams], tuple[float, float, float, float, float]]] = {
    Activation.RELU: lambda p: (0.0, math.inf, 0.0, 0.0, 0.0),
    Activation.RELU6: lambda p: (0.0, 6.0, 0.0, 0.0, 6.0),
    Activation.HARDTANH: lambda p: (_lo(p), _hi(p), 0.0, _lo(p), _hi(p)),
    Activation.LEAKY_RELU: lambda p: (0.0, math.inf, _negative_slope(p), 0.0, 0.0),
    Activation.PRELU: lambda p: (0.0, math.inf, _negative_slope(p), 0.0, 0.0),
    Activation.RRELU: lambda p: (0.0, math.inf, _RRELU_SLOPE, 0.0, 0.0),
    Activation.IDENTITY: lambda p: (-math.inf, math.inf, 0.0, 0.0, 0.0),
}


def _piecewise_gain(params: ActivationParams, x: Moments) -> Gain | None:
    """:func:`activation_gain` of a piecewise-linear activation without a torch call: the grid's nodes
    ``mean + std * t`` are sorted, so each piece takes a run of them, found by bisection on the same float
    arithmetic; on a run, ``E[x]`` and ``E[x^2]`` follow from running sums of ``w``, ``w t`` and ``w t^2`` over
    the standard grid. The grid's sums to rounding (1e-15 relative; up to 1e-13 for a piece in a far tail,
    where ``mean`` and ``std * t`` nearly cancel). None for other activations and for a spread or mean that
    is not finite or whose squares might not be."""
    pieces = _PIECES.get(params.fn)
    if pieces is None:
        return None
    lo, hi, slope, low, high = pieces(params)
    mean, std = x.mean, math.sqrt(max(x.variance, 0.0))
    if not (lo < hi and abs(mean) + SPAN * std < 1e150):  # finite, and so are the squares (NaN: False)
        return None
    ts, below, above = _SUMS
    n = len(ts)

    def node(t: float) -> float:
        return mean + std * t  # as gaussian() and activation_gain's grid compute it

    k0 = bisect.bisect_right(ts, lo, key=node) if lo > -math.inf else 0  # nodes at or below lo
    k1 = bisect.bisect_left(ts, hi, key=node) if hi < math.inf else n  # nodes from k1 on: at or above hi

    def run(k: int, m: int) -> tuple[float, float, float]:
        """``(sum w, sum w x, sum w x^2)`` over nodes ``k <= i < m``."""
        w, wt, wt2 = (_span(below[j], above[j], k, m) for j in range(3))
        return w, mean * w + std * wt, mean * mean * w + 2.0 * mean * std * wt + std * std * wt2

    w_mid, y_mid, y2_mid = run(k0, k1)
    w_low, y_low, y2_low = run(0, k0)
    w_high = _span(below[0], above[0], k1, n)
    first = y_mid + slope * y_low + low * w_low + high * w_high
    second = y2_mid + slope * slope * y2_low + low * low * w_low + high * high * w_high
    return Gain(Moments(second, first), w_mid + slope * slope * w_low, w_mid + slope * w_low)


def _standard_sums() -> tuple[list[float], list[list[float]], list[list[float]]]:
    """The standard grid's nodes ``t``, and running sums of ``w``, ``w t`` and ``w t^2``: ``below[j][k]`` over
    the nodes before ``k``, ``above[j][k]`` over the nodes from ``k`` on. The grid is symmetric, node for node
    (``linspace`` computes its two halves from their own ends), so the sums from the right are those from the
    left, mirrored (``w t`` changing sign)."""
    t, w = _standard()
    wt = w * t
    rows = torch.stack((w, wt, wt * t)).cumsum(1).tolist()
    below = [[0.0] + row for row in rows]
    above = [row[::-1] + [0.0] for row in rows]
    above[1] = [-v for v in above[1]]
    return t.tolist(), below, above


_SUMS = _standard_sums()


def _span(below: list[float], above: list[float], k: int, m: int) -> float:
    """The sum over nodes ``k <= i < m`` from the running sums of the side that subtracts less: a tail's sum
    from its own end, where it is not the difference of two sums near the total."""
    if m <= k:
        return 0.0
    if max(abs(below[m]), abs(below[k])) <= max(abs(above[k]), abs(above[m])):
        return below[m] - below[k]
    return above[k] - above[m]


@lru_cache(maxsize=2)
def _gate_grid(sigmoid: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positive half of the standard grid (it is symmetric, node for node and weight for weight), at half
    scale for a sigmoid (``sigmoid(x) = (1 + tanh(x/2)) / 2``) and at full scale for a tanh; the half's weights
    doubled; ones to subtract from."""
    t, w = _standard()
    half = t[NODES // 2:]
    grid = torch.stack((0.5 * half, half)) if sigmoid else half[None, :]
    return grid, 2.0 * w[NODES // 2:], torch.ones(grid.shape, dtype=DTYPE)


def tanh_moments(variance: float, sigmoid: bool) -> list[float]:
    """``E[y^2]``, ``E[1 - y^2]``, ``E[(1 - y^2)^2]`` for ``y = tanh(a x)``, ``x ~ N(0, variance)``, for ``a``
    one half (with ``sigmoid``) and one, in that order by moment (``E[y] = 0``: tanh is odd, the grid symmetric).

    For a spread that a coarser lattice resolves (:func:`_lattice_size`), in plain Python on it; else on the
    grid's positive half."""
    s = math.sqrt(max(variance, 0.0))
    n = _lattice_size(s)
    if n <= _LATTICE_MAX:
        return _lattice_moments(s, sigmoid, n)
    grid, w, ones = _gate_grid(sigmoid)
    y = torch.tanh(grid * s)
    y2 = y * y
    z = ones - y2
    return torch.mv(torch.cat((y2, z, z * z)), w).tolist()


# A trapezoid rule on the whole line is exact to rounding for a Gaussian times an analytic function once its
# spacing h is fine enough for the function's poles: for tanh(s x), at distance d = pi / (2 s) from the real
# axis, the error is about exp(-2 pi d / h + d^2 / 2), or the Gaussian's own exp(-2 pi^2 / h^2) when the poles
# lie beyond 2 pi / h. The grid's 0.04 is far finer than a moderate spread needs: a lattice of spacing h with the error
# below exp(-_LATTICE_EXPONENT) gives the grid's moments to 3e-14 relative at worst (checked against it on 2000
# spreads of variance 1e-10 to 6, sigmoid and tanh), from 14 nodes on [0, 8] for small spreads, 39 at variance
# one. A recurrent cell takes these moments at every step, one step after another, where the torch calls of the
# grid (seven, 20 us) cost more than a Python loop over 20 nodes (5-8 us).
_LATTICE_EXPONENT = 46.0
_LATTICE_STEP = 0.6  # the widest spacing: the Gaussian's own error exp(-2 pi^2 / h^2) is then 1e-24
_LATTICE_MAX = 64  # beyond (variance about 3), the grid's seven torch calls are cheaper


def _lattice_size(s: float) -> int:
    """Nodes on ``[0, 8]`` of a lattice fine enough for ``tanh(s x)`` (the sigmoid's ``tanh(s x / 2)`` too)."""
    if s <= 0.0:
        return math.ceil(SPAN / _LATTICE_STEP)
    d = math.pi / (2.0 * s)  # tanh's nearest poles, at +-i d
    h = _LATTICE_STEP
    if 2.0 * math.pi / h > d:  # the poles bound the error before the Gaussian does
        h = min(h, 2.0 * math.pi * d / (_LATTICE_EXPONENT + 0.5 * d * d))
    return math.ceil(SPAN / h)


@lru_cache(maxsize=64)
def _half_lattice(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The positive half of a symmetric lattice on ``[-8, 8]`` (nodes at odd multiples of half its spacing),
    and Gaussian weights summing to one over the half."""
    h = SPAN / n
    xs = tuple((k + 0.5) * h for k in range(n))
    ws = [math.exp(-0.5 * x * x) for x in xs]
    total = math.fsum(ws)
    return xs, tuple(w / total for w in ws)


def _lattice_moments(s: float, sigmoid: bool, n: int) -> list[float]:
    """:func:`tanh_moments` on the lattice of ``n`` nodes. With ``sigmoid`` one ``tanh(s x / 2) = u`` per node
    gives both: ``tanh(s x) = 2 u / (1 + u^2)``, so ``1 - tanh(s x)^2 = ((1 - u^2) / (1 + u^2))^2``. The weights
    sum to one, so ``E[1 - y^2]`` is ``1 - E[y^2]``: at most 0.65 for the spreads the lattice takes (tanh of
    variance 3), where the subtraction loses nothing."""
    xs, ws = _half_lattice(n)
    tanh = math.tanh
    if not sigmoid:
        a1 = a3 = 0.0
        for x, w in zip(xs, ws):
            u = tanh(s * x)
            u2 = u * u
            z = 1.0 - u2
            a1 += w * u2
            a3 += w * z * z
        return [a1, 1.0 - a1, a3]
    c = 0.5 * s
    a1 = a3 = b1 = b3 = 0.0
    for x, w in zip(xs, ws):
        u = tanh(c * x)
        u2 = u * u
        z = 1.0 - u2
        p = 1.0 + u2
        q = z / p
        zz = q * q
        a1 += w * u2
        a3 += w * z * z
        b1 += w * (4.0 * u2 / (p * p))
        b3 += w * zz * zz
    return [a1, b1, 1.0 - a1, 1.0 - b1, a3, b3]


def gate_moments(variance: float) -> tuple[float, float, float, float, float, float]:
    """``E[y^2]``, ``E[y'^2]`` and ``E[y']`` of a sigmoid of one ``x ~ N(0, variance)`` (its mean is 1/2), then
    the same of a tanh of it (its mean is 0), as :func:`activation_gain` gives them to rounding: both from
    ``tanh``, ``sigmoid(x) = (1 + tanh(x/2)) / 2`` with slope ``(1 - tanh(x/2)^2) / 4``, on a lattice as coarse
    as the spread allows (:func:`tanh_moments`). Recurrent cells take them at every step of the sequence, one
    step after another, where a torch call's fixed cost (or a record's) is what counts."""
    e = tanh_moments(variance, True)  # rows: sigmoid's half scale, tanh
    return 0.25 * (1.0 + e[0]), e[4] / 16.0, e[2] / 4.0, e[1], e[5], e[3]


def gate_gains(variance: float) -> tuple[Gain, Gain]:
    """:func:`gate_moments` as the gains of a sigmoid and of a tanh."""
    s2, s_back, s_slope, t2, t_back, t_slope = gate_moments(variance)
    return Gain(Moments(s2, 0.5), s_back, s_slope), Gain(Moments(t2, 0.0), t_back, t_slope)


def tanh_gain(variance: float) -> Gain:
    """The gains of tanh of ``x ~ N(0, variance)``, as :func:`gate_gains` computes them."""
    e = tanh_moments(variance, False)
    return Gain(Moments(e[0], 0.0), e[2], e[1])


__all__ = ["Rule", "Gain", "gaussian", "unread_gaussian", "gamma", "uniform", "bernoulli", "point", "mixture", "max_of",
           "matched", "compress", "compressed_gaussian", "interpolate", "activation", "activation_gain", "gate_gains",
           "gate_moments", "tanh_gain", "tanh_moments", "activation_with_derivative", "with_derivative"]
