"""Transfer functions of products of signals: matrix products, softmax and attention.

Attention logits vary across keys with variance ``scale^2 * d_k * E[q^2] * Var(k)`` (Xavier projections
``d -> d_k`` make that 3.2 with ``scale = 1/sqrt(d_k)``, not 1); the output is a ``sum_j p_j^2``-weighted
average of the values, with ``E[p^2]`` from :mod:`initlint.softmax`. Backward, the softmax's gradient sums
to zero over the keys, so what all keys or values share drops out of the query and key gradients; and when
keys and values are projections of one tensor, a query's gradient gains a fixed part (``1 + n_k/fan_in``).

>>> round(logit_variance(2 * 512 / 576, 2 * 512 / 576, 64), 2)  # Xavier 512 -> 64 projections
3.16
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .estimate import Ctx, Est, Factor, Step
from .ops import Op, OpKind
from .softmax import softmax_stats


def _matmul(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    if len(ins) != 2:
        return None
    a, b = ins
    c = op.params.contracted or (a.shape[-1] if a.shape else None)
    if not c:
        return None
    shared = 0.0 if op.params.transposed_rhs else b.unit  # b's columns keep their offsets along c
    second = c * a.second * b.second + c * (c - 1) * a.mean**2 * (b.mean**2 + shared)
    mean = c * a.mean * b.mean
    terms = (op.numel or 0) * c
    ga = terms / a.numel * b.second if a.numel and terms else c * b.second
    gb = terms / b.numel * a.second if b.numel and terms else c * a.second
    return Step(second, mean, (c * a.mean) ** 2 * shared, grads=(Factor(ga), Factor(gb)))


def _softmax(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    x = ins[0]
    if not x.shape:
        return None
    n = x.shape[op.params.dim]
    st = softmax_stats(1, n, x.variance)
    if op.params.log:
        return Step(st.log_second, st.log_mean, grads=(Factor(max(1 - 2 / n + n * st.p2, 0.0)),))
    return Step(st.p2, 1.0 / n, grads=(Factor(st.jacobian),))


def logit_variance(q_second: float, k_variance: float, head_dim: int, scale: float | None = None) -> float:
    """Variance across keys of the attention logits ``scale * q . k``: ``scale^2 * d * E[q^2] * Var(k)``
    (``scale`` defaults to ``1/sqrt(d)``; ``Var(k)`` excludes offsets shared by every key)."""
    s = 1.0 / math.sqrt(head_dim) if scale is None else scale
    return s * s * head_dim * q_second * k_variance


def _attention(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    if len(ins) < 3 or not all(e.shape for e in ins[:3]):
        return None
    q, k, v = ins[:3]
    p = op.params
    d = p.head_dim or q.shape[-1]
    n_q, n_k, d_v = q.shape[-2], p.seq_len or k.shape[-2], v.shape[-1]
    scale = p.scale if p.scale is not None else 1.0 / math.sqrt(d)
    logits = logit_variance(q.second, max(k.variance - k.unit, 0.0), d, scale)
    st = softmax_stats(n_q, n_k, logits, p.causal or op.name in ctx.causal)
    keep = 1.0 / (1.0 - p.dropout_p) if 0 < p.dropout_p < 1 else 1.0
    rows = n_k * st.p2 * keep  # E[sum_j p_j^2] per query
    u = min(v.unit, v.variance)
    second = v.mean**2 + u + (v.variance - u) * rows
    # the softmax's gradient sums to zero over the keys: what all values or keys share drops out of it
    g_logit = st.jacobian * d_v * max(v.variance - v.unit, 0.0) * keep
    # a query's gradient is g^T C with C the keys' covariance with the values over the keys: n_k draws of
    # independent k and v make C small (1/n_k); projections of one input add a fixed part (1/fan_in)
    coupled = 1.0 + n_k / shared_fan_in if (shared_fan_in := _shared_projection(ctx, op)) else 1.0
    grads = (Factor(scale * scale * n_k * g_logit * max(k.variance - k.unit, 0.0) * coupled),
             Factor(scale * scale * n_q * g_logit * q.second), Factor(n_q * st.p2 * keep))
    return Step(second, v.mean, u, grads=grads + (None,) * (len(ins) - 3))


def _projection(ctx: Ctx, name: str) -> Op | None:
    """The linear layer a tensor is a reshaped slice of (a head of ``q = W_q x``), if it is one."""
    op = ctx.graph.op(name)
    while op.kind is OpKind.PASSTHROUGH and op.inputs:
        op = ctx.graph.op(op.inputs[0])
    return op if op.kind is OpKind.LINEAR and op.inputs and op.weight is not None else None


def _shared_projection(ctx: Ctx, op: Op) -> float | None:
    """The fan-in of the projections when keys and values are projected from the same tensor."""
    if ctx is None or len(op.inputs) < 3:
        return None
    k, v = _projection(ctx, op.inputs[1]), _projection(ctx, op.inputs[2])
    if k is None or v is None or k.inputs[0] != v.inputs[0]:
        return None
    return v.weight.fan_in


TABLE = {
    OpKind.MATMUL: _matmul,
    OpKind.SOFTMAX: _softmax,
    OpKind.ATTENTION: _attention,
}

__all__ = ["TABLE", "logit_variance"]
