"""The fans a conv really has on a given input: terms summed per output and outputs fed per input, borders
included.

Without padding effects, a conv sums ``in/groups * k^D`` terms per output and a transposed conv with stride
``s`` sums ``in/groups * k^D / s^D`` on average (the phases differ: with ``k = 3, s = 2`` one phase of four
sees 4 taps and another 1). Zero padding removes taps at the borders, which matters on small feature maps:
a 3x3 conv on a 4x4 map sums 69% of ``9 * in`` terms on average. Counting valid (output, tap) pairs per
dimension gives both averages exactly.

>>> from initlint.ops import ConvParams
>>> p = ConvParams(8, 8, (3, 3), (1, 1), (1, 1))
>>> conv_fans(p, (1, 8, 4, 4), (1, 8, 4, 4))[0] / (8 * 9)
0.6944444444444444
>>> t = ConvParams(8, 8, (4, 4), (2, 2), (1, 1), transposed=True)
>>> conv_fans(t, (1, 8, 16, 16), (1, 8, 32, 32))[0] / (8 * 16 / 4) > 0.93  # interior: 8*16/4 terms
True
"""

from __future__ import annotations

import math
from functools import lru_cache

from .ops import ConvParams


def _counts(n_from: int, n_to: int, k: int, s: int, p: int, d: int) -> list[int]:
    """Per tap, the positions ``q`` in ``[0, n_from)`` that map to ``q*s - p + t*d`` in ``[0, n_to)``; for a
    conv ``q`` is an output position, for a transposed conv an input position."""
    out = []
    for t in range(k):
        off = t * d - p
        lo = max(math.ceil(-off / s), 0)
        hi = min((n_to - 1 - off) // s, n_from - 1)
        out.append(max(0, hi - lo + 1))
    return out


def _padding(params: ConvParams, dims: int) -> tuple[int, ...]:
    pad = params.padding
    if pad == "valid":
        return (0,) * dims
    if pad == "same":
        dil = params.dilation if len(params.dilation) == dims else params.dilation * dims
        return tuple(d * (k - 1) // 2 for d, k in zip(dil, params.kernel_size))
    pad = tuple(pad)
    return pad if len(pad) == dims else pad * dims


def conv_fans(params: ConvParams, in_shape, out_shape) -> tuple[float, float, float] | None:
    """``(fan_in, fan_out, offset_fan)`` averaged over the positions of this input, or None without shapes.

    ``offset_fan`` counts how the input's per-channel means reach an output channel's mean over positions:
    ``in/groups * prod_d sum_t f_t^2``, with ``f_t`` the fraction of output positions where tap ``t`` lands.
    It is ``fan_in`` in the interior of a conv, less at zero-padded borders and ``fan_in / s^D`` for a
    transposed conv, whose phases each see their own offset.

    Memoized (a pure function of a frozen record and two shapes): the engine and IL303 ask it for the same
    convs, and a model's repeated blocks for the same configuration.
    """
    if not in_shape or not out_shape:
        return None
    return _conv_fans(params, tuple(in_shape), tuple(out_shape))


@lru_cache(maxsize=4096)
def _conv_fans(params: ConvParams, in_shape: tuple, out_shape: tuple) -> tuple[float, float, float] | None:
    dims = params.dims
    if not in_shape or not out_shape or len(in_shape) < dims + 1 or len(out_shape) < dims + 1:
        return None
    n_in, n_out = in_shape[-dims:], out_shape[-dims:]
    if min(n_in) <= 0 or min(n_out) <= 0:
        return None
    stride = params.stride if len(params.stride) == dims else params.stride * dims
    dil = params.dilation if len(params.dilation) == dims else params.dilation * dims
    pad = _padding(params, dims)
    taps_in = taps_out = offsets = 1.0
    for a, b, k, s, p, d in zip(n_in, n_out, params.kernel_size, stride, pad, dil):
        counts = _counts(a, b, k, s, p, d) if params.transposed else _counts(b, a, k, s, p, d)
        pairs = sum(counts)
        taps_in *= pairs / b
        taps_out *= pairs / a
        # fraction of output positions each tap reaches (a transposed conv's tap reaches one per input)
        offsets *= sum((c / b) ** 2 for c in counts)
    g = params.groups
    return params.in_channels / g * taps_in, params.out_channels / g * taps_out, params.in_channels / g * offsets


__all__ = ["conv_fans"]
