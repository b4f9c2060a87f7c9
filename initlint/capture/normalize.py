"""One vocabulary for every capture: tables from what was called to an :class:`~initlint.ops.Op`.

Two tables, each of small handlers, in the manner of fvcore's ``jit_handles``:

* :data:`FUNCTIONS` maps a canonical function name (``linear``, ``add``, ``softmax``...) to a handler that
  reads resolved arguments. torch functions, tensor methods, ``operator`` builtins and ATen overloads all
  reduce to the same names, so ``F.relu``, ``x.relu()``, ``torch.relu`` and ``aten.relu.default`` meet in one
  handler. Where ATen orders arguments differently, the handler looks at ``call.aten``.
* :data:`MODULES` maps a ``torch.nn`` module type to a handler that reads the module's attributes.

A handler returns an :class:`OpSpec` (the op minus what the capture knows: name, location, shape) or ``None``
for a call that produces no tensor. Anything missing from the tables becomes an ``UNKNOWN`` op and is listed
in the coverage; it is never fatal.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..ops import (
    Activation,
    ActivationParams,
    AttentionParams,
    CompareParams,
    ConcatParams,
    ConvParams,
    DropoutParams,
    EmbeddingParams,
    LinearParams,
    MathFn,
    MathParams,
    MatmulParams,
    NormKind,
    NormParams,
    Op,
    OpKind,
    OpParams,
    PoolKind,
    PoolParams,
    RandomDist,
    RandomParams,
    RecurrentMode,
    RecurrentParams,
    Reduction,
    ReduceParams,
    ScaleParams,
    SoftmaxParams,
    WeightStats,
)


@dataclass(frozen=True)
class Ref:
    """A tensor operand: the op that produced it."""

    op: Op

    @property
    def name(self) -> str:
        return self.op.name

    @property
    def is_param(self) -> bool:
        return self.op.kind is OpKind.PARAM

    @property
    def shape(self) -> tuple[int, ...] | None:
        return self.op.shape


class Opaque:
    """A non-tensor value computed in the graph (a size, a shape): known to exist, not its value."""

    def __repr__(self) -> str:
        return "<opaque>"


OPAQUE = Opaque()


@dataclass
class Call:
    name: str  # canonical name
    args: list[Any]
    kwargs: dict[str, Any]
    aten: bool = False  # ATen argument order
    out_shape: tuple[int, ...] | None = None

    def arg(self, index: int, key: str | None = None, default: Any = None) -> Any:
        if key is not None and key in self.kwargs:
            return self.kwargs[key]
        return self.args[index] if index < len(self.args) else default

    def refs(self) -> list[Ref]:
        """Every tensor operand, lists flattened, in order."""
        out: list[Ref] = []
        for a in [*self.args, *self.kwargs.values()]:
            if isinstance(a, Ref):
                out.append(a)
            elif isinstance(a, (list, tuple)):
                out.extend(x for x in a if isinstance(x, Ref))
        return out


@dataclass(frozen=True)
class OpSpec:
    kind: OpKind
    inputs: tuple[Ref, ...] = ()
    params: OpParams = None
    weight: WeightStats | None = None
    bias: WeightStats | None = None
    target: str | None = None  # overrides the display target


Handler = Callable[[Call], "OpSpec | None"]
FUNCTIONS: dict[str, Handler] = {}
MODULES: dict[type, Callable[[nn.Module, str, Call], OpSpec]] = {}


def _on(*names: str):
    def wrap(fn: Handler) -> Handler:
        for n in names:
            FUNCTIONS[n] = fn
        return fn

    return wrap


def _module(*types: type):
    def wrap(fn):
        for t in types:
            MODULES[t] = fn
        return fn

    return wrap


def _tup(v, n: int | None = None) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return tuple([int(v)] * (n or 1))


def _num(v) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_meta:
        return float(v.item())
    return None


# -- weight statistics with the true fans ------------------------------------------------------------------


def linear_weight(name: str, w: torch.Tensor) -> WeightStats:
    out_f, in_f = w.shape[0], w.shape[1]
    return WeightStats.of(name, w, in_f, out_f, (in_f, out_f))


def conv_params_and_weight(
    name: str, w: torch.Tensor, stride, padding, dilation, groups: int, transposed: bool, output_padding=0,
    has_bias: bool = True,
) -> tuple[ConvParams, WeightStats]:
    dims = w.dim() - 2
    k = tuple(int(s) for s in w.shape[2:])
    taps = math.prod(k)
    s = _tup(stride, dims)
    S = math.prod(s)
    if transposed:  # weight: (in, out/groups, *k)
        c_in, c_out = w.shape[0], w.shape[1] * groups
        fan_in = c_in / groups * taps / S  # terms per output, averaged over the s^D phases
        fan_out = c_out / groups * taps  # outputs each input feeds
    else:  # weight: (out, in/groups, *k)
        c_out, c_in = w.shape[0], w.shape[1] * groups
        fan_in = c_in / groups * taps
        fan_out = c_out / groups * taps / S
    torch_fans = (w.shape[1] * taps, w.shape[0] * taps)  # torch.nn.init._calculate_fan_in_and_fan_out
    pad = padding if isinstance(padding, str) else _tup(padding, dims)
    params = ConvParams(
        int(c_in), int(c_out), k, s, pad, _tup(dilation, dims), int(groups), transposed,
        _tup(output_padding, dims), has_bias,
    )
    return params, WeightStats.of(name, w, fan_in, fan_out, torch_fans)


def _bias(name: str, b: torch.Tensor | None) -> WeightStats | None:
    return None if b is None else WeightStats.of(name, b, 1, 1)


def _rms(t: torch.Tensor | None) -> float | None:
    if t is None or t.is_meta:
        return None
    return t.detach().float().square().mean().sqrt().item()


# -- functions ---------------------------------------------------------------------------------------------


def _param_tensor(ref) -> tuple[str, torch.Tensor] | None:
    if isinstance(ref, Ref) and ref.is_param and ref.op.weight is not None:
        return ref.op.weight.name, ref.op.weight.tensor
    return None


@_on("linear")
def _linear(c: Call):
    x, w, b = c.arg(0), c.arg(1, "weight"), c.arg(2, "bias")
    pw = _param_tensor(w)
    if pw is None or pw[1] is None:
        return OpSpec(OpKind.MATMUL, tuple(r for r in (x, w) if isinstance(r, Ref)), MatmulParams())
    name, wt = pw
    pb = _param_tensor(b)
    params = LinearParams(wt.shape[1], wt.shape[0], b is not None)
    return OpSpec(OpKind.LINEAR, (x,), params, linear_weight(name, wt), _bias(*pb) if pb else None)


@_on("addmm")
def _addmm(c: Call):  # bias + x @ W, as HF's Conv1D (GPT-2) writes a linear layer
    b, x, w = c.arg(0), c.arg(1), c.arg(2)
    pw = _param_tensor(w)
    if pw is None or pw[1] is None:
        return OpSpec(OpKind.MATMUL, tuple(r for r in (x, w) if isinstance(r, Ref)), MatmulParams())
    name, wt = pw
    in_f, out_f = wt.shape[0], wt.shape[1]
    pb = _param_tensor(b)
    return OpSpec(OpKind.LINEAR, (x,), LinearParams(in_f, out_f, True),
                  WeightStats.of(name, wt, in_f, out_f, (out_f, in_f)), _bias(*pb) if pb else None)


def _conv(c: Call, transposed: bool | None = None):
    x, w, b = c.arg(0), c.arg(1, "weight"), c.arg(2, "bias")
    pw = _param_tensor(w)
    if pw is None or pw[1] is None:
        return OpSpec(OpKind.UNKNOWN, tuple(c.refs()))
    name, wt = pw
    if c.name == "convolution":  # aten: input, weight, bias, stride, padding, dilation, transposed, output_padding, groups
        stride, padding, dilation = c.arg(3), c.arg(4), c.arg(5)
        transposed, output_padding, groups = bool(c.arg(6)), c.arg(7), int(c.arg(8))
    elif transposed:  # input, weight, bias, stride, padding, output_padding, groups, dilation
        stride, padding = c.arg(3, "stride", 1), c.arg(4, "padding", 0)
        output_padding, groups, dilation = c.arg(5, "output_padding", 0), c.arg(6, "groups", 1), c.arg(7, "dilation", 1)
    else:  # input, weight, bias, stride, padding, dilation, groups
        stride, padding, dilation = c.arg(3, "stride", 1), c.arg(4, "padding", 0), c.arg(5, "dilation", 1)
        groups, output_padding = c.arg(6, "groups", 1), 0
    params, stats = conv_params_and_weight(name, wt, stride, padding, dilation, int(groups), bool(transposed),
                                           output_padding, b is not None)
    pb = _param_tensor(b)
    return OpSpec(OpKind.CONV, (x,), params, stats, _bias(*pb) if pb else None)


for _n in ("conv1d", "conv2d", "conv3d", "convolution"):
    FUNCTIONS[_n] = _conv
for _n in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
    FUNCTIONS[_n] = lambda c: _conv(c, transposed=True)


@_on("embedding")
def _embedding(c: Call):
    a, b = c.arg(0), c.arg(1)
    weight, ids = (a, b) if isinstance(a, Ref) and a.is_param else (b, a)
    pw = _param_tensor(weight)
    if pw is None or pw[1] is None:
        return OpSpec(OpKind.UNKNOWN, tuple(c.refs()))
    name, wt = pw
    stats = WeightStats.of(name, wt, 1, 1)
    inputs = (ids,) if isinstance(ids, Ref) else ()
    return OpSpec(OpKind.EMBEDDING, inputs, EmbeddingParams(wt.shape[0], wt.shape[1]), stats)


def _norm_spec(c: Call, kind: NormKind, x, w, b, eps, **extra) -> OpSpec:
    pw, pb = _param_tensor(w), _param_tensor(b)
    params = NormParams(
        kind, eps=float(eps) if eps is not None else 1e-5, affine=pw is not None,
        weight_rms=_rms(pw[1]) if pw else 1.0, bias_rms=_rms(pb[1]) if pb else 0.0, **extra,
    )
    return OpSpec(OpKind.NORM, (x,), params, WeightStats.of(*pw, 1, 1) if pw and pw[1] is not None else None,
                  _bias(*pb) if pb else None)


@_on("layer_norm")
def _layer_norm(c: Call):
    shape = _tup(c.arg(1, "normalized_shape"))
    return _norm_spec(c, NormKind.LAYER, c.arg(0), c.arg(2, "weight"), c.arg(3, "bias"), c.arg(4, "eps", 1e-5),
                      normalized_shape=shape, num_features=shape[-1])


@_on("rms_norm")
def _rms_norm(c: Call):
    shape = _tup(c.arg(1, "normalized_shape"))
    return _norm_spec(c, NormKind.RMS, c.arg(0), c.arg(2, "weight"), None, c.arg(3, "eps", None),
                      normalized_shape=shape, num_features=shape[-1])


@_on("group_norm")
def _group_norm(c: Call):
    return _norm_spec(c, NormKind.GROUP, c.arg(0), c.arg(2, "weight"), c.arg(3, "bias"), c.arg(4, "eps", 1e-5),
                      num_groups=int(c.arg(1, "num_groups")))


@_on("batch_norm", "native_batch_norm", "native_batch_norm_legit_functional", "native_batch_norm_legit",
     "native_batch_norm_legit_no_training")
def _batch_norm(c: Call):
    if c.aten:  # input, weight, bias, running_mean, running_var, training, momentum, eps
        x, w, b, rm, training, eps = c.arg(0), c.arg(1), c.arg(2), c.arg(3), c.arg(5), c.arg(7)
        if c.name == "native_batch_norm_legit_no_training":
            training, eps = False, c.arg(6)
    else:  # F.batch_norm: input, running_mean, running_var, weight, bias, training, momentum, eps
        x, rm, w, b = c.arg(0), c.arg(1), c.arg(3, "weight"), c.arg(4, "bias")
        training, eps = c.arg(5, "training", False), c.arg(7, "eps", 1e-5)
    batch_stats = bool(training) or rm is None
    return _norm_spec(c, NormKind.BATCH, x, w, b, eps, uses_batch_stats=batch_stats)


@_on("instance_norm")
def _instance_norm(c: Call):
    if c.aten:  # input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps
        return _norm_spec(c, NormKind.INSTANCE, c.arg(0), c.arg(1), c.arg(2), c.arg(7, None, 1e-5))
    return _norm_spec(c, NormKind.INSTANCE, c.arg(0), c.arg(3, "weight"), c.arg(4, "bias"), c.arg(7, "eps", 1e-5))


def _act(fn: Activation, **fixed):
    def handler(c: Call):
        x = c.arg(0)
        if not isinstance(x, Ref):
            return None
        return OpSpec(OpKind.ACTIVATION, (x,), ActivationParams(fn, **fixed))

    return handler


for _fn in (Activation.RELU, Activation.SILU, Activation.MISH, Activation.TANH, Activation.SIGMOID,
            Activation.HARDSIGMOID, Activation.HARDSWISH, Activation.SELU, Activation.SOFTSIGN,
            Activation.LOGSIGMOID, Activation.TANHSHRINK):
    FUNCTIONS[_fn.value] = _act(_fn)
FUNCTIONS["relu6"] = _act(Activation.RELU6)
FUNCTIONS["rrelu"] = _act(Activation.RRELU)


@_on("leaky_relu")
def _leaky(c: Call):
    slope = _num(c.arg(1, "negative_slope", 0.01))
    return OpSpec(OpKind.ACTIVATION, (c.arg(0),), ActivationParams(Activation.LEAKY_RELU, negative_slope=slope))


@_on("gelu")
def _gelu(c: Call):
    approx = c.arg(1, "approximate", "none")
    return OpSpec(OpKind.ACTIVATION, (c.arg(0),),
                  ActivationParams(Activation.GELU, approximate=None if approx == "none" else approx))


@_on("elu", "celu")
def _elu(c: Call):
    fn = Activation.ELU if c.name == "elu" else Activation.CELU
    return OpSpec(OpKind.ACTIVATION, (c.arg(0),), ActivationParams(fn, alpha=_num(c.arg(1, "alpha", 1.0))))


@_on("softplus")
def _softplus(c: Call):
    return OpSpec(OpKind.ACTIVATION, (c.arg(0),),
                  ActivationParams(Activation.SOFTPLUS, beta=_num(c.arg(1, "beta", 1.0)),
                                   threshold=_num(c.arg(2, "threshold", 20.0))))


@_on("hardtanh")
def _hardtanh(c: Call):
    lo, hi = _num(c.arg(1, "min_val", -1.0)), _num(c.arg(2, "max_val", 1.0))
    fn = Activation.RELU6 if (lo, hi) == (0.0, 6.0) else Activation.HARDTANH
    return OpSpec(OpKind.ACTIVATION, (c.arg(0),), ActivationParams(fn, min_val=lo, max_val=hi))


@_on("prelu")
def _prelu(c: Call):
    pw = _param_tensor(c.arg(1, "weight"))
    slope = pw[1].detach().float().mean().item() if pw and pw[1] is not None and not pw[1].is_meta else 0.25
    return OpSpec(OpKind.ACTIVATION, (c.arg(0),), ActivationParams(Activation.PRELU, negative_slope=slope))


def _binary(c: Call, kind: OpKind) -> OpSpec | None:
    a, b = c.arg(0), c.arg(1, "other")
    alpha = _num(c.kwargs.get("alpha", c.args[2] if len(c.args) > 2 else 1.0)) or 1.0
    if kind in (OpKind.ADD, OpKind.SUB) and alpha != 1.0 and isinstance(b, Ref):
        pass  # x + alpha * y: rare; the engine treats alpha as 1
    ra, rb = isinstance(a, Ref), isinstance(b, Ref)
    if ra and rb:
        if kind in (OpKind.MUL, OpKind.DIV) and (a.is_param or b.is_param) and not (a.is_param and b.is_param):
            x, p = (b, a) if a.is_param else (a, b)
            if kind is OpKind.DIV and x is b:
                return OpSpec(OpKind.DIV, (a, b))
            w = p.op.weight
            rms = w.rms if w is not None else 1.0
            factor = rms if kind is OpKind.MUL else (1.0 / rms if rms else math.inf)
            learned = bool(w is not None and w.trainable)
            return OpSpec(OpKind.SCALE, (x,), ScaleParams(factor=factor, param=w.name if w else None,
                                                           learned=learned))
        return OpSpec(kind, (a, b))
    if not ra and not rb:
        return None  # arithmetic on sizes
    x, other = (a, b) if ra else (b, a)
    value = _num(other)
    if value is None:  # a non-tensor we cannot see (a size): shape arithmetic keeps the scale unknown
        return OpSpec(OpKind.UNKNOWN, (x,))
    if kind is OpKind.ADD:
        return OpSpec(OpKind.SCALE, (x,), ScaleParams(shift=value * (alpha if rb else 1.0)))
    if kind is OpKind.SUB:
        return OpSpec(OpKind.SCALE, (x,), ScaleParams(factor=1.0 if ra else -1.0, shift=-value if ra else value))
    if kind is OpKind.MUL:
        return OpSpec(OpKind.SCALE, (x,), ScaleParams(factor=value))
    if ra:  # x / c
        return OpSpec(OpKind.SCALE, (x,), ScaleParams(factor=1.0 / value if value else math.inf))
    return OpSpec(OpKind.MATH, (x,), MathParams(MathFn.RECIPROCAL))  # c / x, scale ignored


FUNCTIONS.update({
    "add": lambda c: _binary(c, OpKind.ADD), "iadd": lambda c: _binary(c, OpKind.ADD),
    "sub": lambda c: _binary(c, OpKind.SUB), "isub": lambda c: _binary(c, OpKind.SUB),
    "mul": lambda c: _binary(c, OpKind.MUL), "imul": lambda c: _binary(c, OpKind.MUL),
    "div": lambda c: _binary(c, OpKind.DIV), "truediv": lambda c: _binary(c, OpKind.DIV),
    "itruediv": lambda c: _binary(c, OpKind.DIV),
})


@_on("rsub")
def _rsub(c: Call):  # other - x
    return _binary(Call("sub", [c.arg(1), c.arg(0)], {}, c.aten), OpKind.SUB)


@_on("neg")
def _neg(c: Call):
    return OpSpec(OpKind.SCALE, (c.arg(0),), ScaleParams(factor=-1.0))


@_on("matmul", "mm", "bmm", "baddbmm")
def _matmul(c: Call):
    a, b = (c.arg(1), c.arg(2)) if c.name == "baddbmm" else (c.arg(0), c.arg(1))
    pw = _param_tensor(b)
    if isinstance(a, Ref) and not a.is_param and pw is not None and pw[1] is not None and pw[1].dim() == 2:
        name, wt = pw  # x @ W with W a parameter: a linear layer written by hand
        in_f, out_f = wt.shape
        return OpSpec(OpKind.LINEAR, (a,), LinearParams(in_f, out_f, False),
                      WeightStats.of(name, wt, in_f, out_f, (out_f, in_f)))
    refs = tuple(r for r in (a, b) if isinstance(r, Ref))
    contracted = a.shape[-1] if isinstance(a, Ref) and a.shape else None
    transposed = isinstance(b, Ref) and b.op.target.split(".")[-1] in ("transpose", "t", "permute", "mT")
    return OpSpec(OpKind.MATMUL, refs, MatmulParams(contracted, transposed))


@_on("softmax", "log_softmax")
def _softmax(c: Call):
    dim = c.arg(1, "dim", -1)
    return OpSpec(OpKind.SOFTMAX, (c.arg(0),), SoftmaxParams(int(dim) if dim is not None else -1,
                                                             log=c.name == "log_softmax"))


@_on("scaled_dot_product_attention")
def _sdpa(c: Call):
    q, k, v = c.arg(0), c.arg(1), c.arg(2)
    mask = c.arg(3, "attn_mask")
    params = AttentionParams(
        scale=_num(c.kwargs.get("scale", c.args[6] if len(c.args) > 6 else None)),
        head_dim=q.shape[-1] if isinstance(q, Ref) and q.shape else None,
        seq_len=k.shape[-2] if isinstance(k, Ref) and k.shape and len(k.shape) >= 2 else None,
        causal=bool(c.arg(5, "is_causal", False)),
        dropout_p=float(_num(c.arg(4, "dropout_p", 0.0)) or 0.0),
        has_mask=mask is not None,
    )
    return OpSpec(OpKind.ATTENTION, tuple(r for r in (q, k, v) if isinstance(r, Ref)), params)


@_on("cat", "concat", "concatenate", "stack")
def _cat(c: Call):
    tensors = [t for t in c.arg(0, "tensors") if isinstance(t, Ref)]
    dim = int(c.arg(1, "dim", 0) or 0)
    stack = c.name == "stack"
    sizes = tuple(1 if stack else (t.shape[dim] if t.shape and -len(t.shape) <= dim < len(t.shape) else 0)
                  for t in tensors)
    return OpSpec(OpKind.CONCAT, tuple(tensors), ConcatParams(dim, sizes, stack))


@_on("dropout", "native_dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
     "dropout1d", "dropout2d", "dropout3d")
def _dropout(c: Call):
    p = float(_num(c.arg(1, "p", 0.5)) or 0.0)
    training = c.arg(2, "train" if c.aten else "training", True)
    return OpSpec(OpKind.DROPOUT, (c.arg(0),), DropoutParams(p, True, bool(training)))


def _pool(kind: PoolKind):
    def handler(c: Call):
        if kind in (PoolKind.ADAPTIVE_AVG, PoolKind.ADAPTIVE_MAX):
            return OpSpec(OpKind.POOL, (c.arg(0),), PoolParams(kind, output_size=_tup(c.arg(1, "output_size"))))
        k = _tup(c.arg(1, "kernel_size"))
        stride = c.arg(2, "stride")
        return OpSpec(OpKind.POOL, (c.arg(0),), PoolParams(kind, k, _tup(stride) if stride else k))

    return handler


for _d in (1, 2, 3):
    FUNCTIONS[f"max_pool{_d}d"] = FUNCTIONS[f"max_pool{_d}d_with_indices"] = _pool(PoolKind.MAX)
    FUNCTIONS[f"avg_pool{_d}d"] = _pool(PoolKind.AVG)
    FUNCTIONS[f"adaptive_avg_pool{_d}d"] = _pool(PoolKind.ADAPTIVE_AVG)
    FUNCTIONS[f"adaptive_max_pool{_d}d"] = _pool(PoolKind.ADAPTIVE_MAX)
    FUNCTIONS[f"lp_pool{_d}d"] = _pool(PoolKind.LP)


def _reduce(kind: Reduction):
    def handler(c: Call):
        x = c.arg(0)
        if not isinstance(x, Ref):
            return None
        dims = c.arg(1, "dim")
        if isinstance(dims, int):
            dims = (dims,)
        dims = tuple(int(d) for d in dims) if isinstance(dims, (list, tuple)) else ()
        count = None
        if x.shape:
            idx = dims or tuple(range(len(x.shape)))
            count = math.prod(x.shape[d] for d in idx if -len(x.shape) <= d < len(x.shape))
        return OpSpec(OpKind.REDUCE, (x,), ReduceParams(kind, dims, count))

    return handler


for _r, _names in {
    Reduction.MEAN: ("mean",), Reduction.SUM: ("sum",), Reduction.MAX: ("amax", "max"),
    Reduction.MIN: ("amin", "min"), Reduction.NORM: ("norm", "linalg_vector_norm"),
    Reduction.VAR: ("var",), Reduction.STD: ("std",),
}.items():
    for _n in _names:
        FUNCTIONS[_n] = _reduce(_r)


def _math(fn: MathFn):
    def handler(c: Call):
        x = c.arg(0)
        if not isinstance(x, Ref):
            return None
        exponent = _num(c.arg(1, "exponent")) if fn is MathFn.POW else None
        if fn is MathFn.POW and exponent is None:
            return OpSpec(OpKind.UNKNOWN, tuple(c.refs()))
        lo = _num(c.arg(1, "min")) if fn is MathFn.CLAMP else None
        hi = _num(c.arg(2, "max")) if fn is MathFn.CLAMP else None
        return OpSpec(OpKind.MATH, (x,), MathParams(fn, exponent, lo, hi))

    return handler


for _fn in MathFn:
    FUNCTIONS[_fn.value] = _math(_fn)
FUNCTIONS["clip"] = FUNCTIONS["clamp_min"] = FUNCTIONS["clamp"]
FUNCTIONS["pow_"] = FUNCTIONS["pow"]


def _compare(name: str):
    def handler(c: Call):
        a, b = c.arg(0), c.arg(1)
        refs = tuple(r for r in (a, b) if isinstance(r, Ref))
        if not refs:
            return None
        return OpSpec(OpKind.COMPARE, refs, CompareParams(name, _num(b) if not isinstance(b, Ref) else None))

    return handler


for _n in ("gt", "lt", "ge", "le", "eq", "ne"):
    FUNCTIONS[_n] = _compare(_n)


@_on("where", "masked_fill")
def _where(c: Call):
    refs = [r for r in c.refs() if not r.is_param]
    if c.name == "masked_fill":  # the mask carries no signal
        refs = [c.arg(0)] if isinstance(c.arg(0), Ref) else refs
    return OpSpec(OpKind.WHERE, tuple(refs))


@_on("rand", "randn", "rand_like", "randn_like", "bernoulli", "normal", "uniform", "randint", "randint_like")
def _random(c: Call):
    dist = {"randn": RandomDist.NORMAL, "randn_like": RandomDist.NORMAL, "normal": RandomDist.NORMAL,
            "bernoulli": RandomDist.BERNOULLI}.get(c.name, RandomDist.UNIFORM)
    p = _num(c.arg(1, "p")) if c.name == "bernoulli" else None
    return OpSpec(OpKind.RANDOM, (), RandomParams(dist, p))


_FACTORIES = ("arange", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "empty", "empty_like",
              "tensor", "scalar_tensor", "eye", "linspace", "new_zeros", "new_ones", "new_full", "new_empty",
              "empty_strided", "lift_fresh_copy", "triu_indices", "tril_indices")
for _n in _FACTORIES:
    FUNCTIONS[_n] = lambda c: OpSpec(OpKind.FACTORY, ())

_PASSTHROUGH = (
    "view", "reshape", "unsafe_view", "flatten", "unflatten", "permute", "transpose", "t", "contiguous",
    "clone", "detach", "unsqueeze", "squeeze", "expand", "expand_as", "repeat", "select", "slice", "narrow",
    "getitem", "split", "chunk", "unbind", "split_with_sizes", "to", "type", "float", "half", "double",
    "bfloat16", "to_copy", "type_as", "alias", "pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d",
    "replication_pad2d", "roll", "flip", "tril", "triu", "index_select", "gather", "interpolate",
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d", "upsample_linear1d",
    "upsample_bicubic2d", "upsample_trilinear3d", "pixel_shuffle", "pixel_unshuffle", "movedim", "moveaxis",
    "repeat_interleave", "view_as", "reshape_as", "as_strided", "index", "mT", "swapaxes", "swapdims",
    "unfold", "masked_select", "cpu", "cuda", "requires_grad_", "long", "int", "bool", "nan_to_num",
    "dropout_", "flatten_dense_tensors", "copy", "lift", "slice_scatter", "select_scatter", "tile",
    "broadcast_to", "channel_shuffle", "cumsum_", "zero_",
)
for _n in _PASSTHROUGH:
    FUNCTIONS[_n] = lambda c: OpSpec(OpKind.PASSTHROUGH, tuple(r for r in c.refs()[:1]))

# Calls that produce no tensor: sizes, assertions, grad-mode switches.
NON_TENSOR = frozenset({
    "size", "dim", "numel", "sym_size", "sym_numel", "sym_stride", "stride", "getattr", "assert_tensor_metadata",
    "assert_async", "assert_scalar", "sym_constrain_range_for_size", "item", "local_scalar_dense", "eq_",
    "is_floating_point", "is_complex", "_set_grad_enabled", "set_grad_enabled", "floordiv", "element_size",
    "sym_not", "sym_max", "sym_min", "sym_float", "sym_int", "guard_size_oblivious", "device", "get_device",
})


def canonical(name: str) -> str:
    """``_softmax`` -> ``softmax``, ``add_`` -> ``add``, ``__add__`` -> ``add``."""
    name = name.strip("_") if name.startswith("__") else name
    if name.endswith("_") and name[:-1] in FUNCTIONS:
        name = name[:-1]
    if name not in FUNCTIONS and name.startswith("_") and name.lstrip("_") in FUNCTIONS:
        name = name.lstrip("_")
    if name not in FUNCTIONS and name.endswith("_") and name.rstrip("_") in FUNCTIONS:
        name = name.rstrip("_")
    return name


def function_name(target: Any) -> str:
    """The canonical name of an fx ``call_function`` target or ATen overload."""
    if isinstance(target, torch._ops.OpOverload):
        return canonical(target._opname)
    if isinstance(target, torch._ops.OpOverloadPacket):
        return canonical(target._qualified_op_name.split("::")[-1])
    if target is getattr:
        return "getattr"
    special = {operator.getitem: "getitem", operator.matmul: "matmul", operator.floordiv: "floordiv",
               operator.pow: "pow", operator.neg: "neg"}
    if target in special:
        return special[target]
    return canonical(getattr(target, "__name__", str(target)))


def display_target(target: Any) -> str:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(target)
    if isinstance(target, str):
        return target
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod.startswith("torch"):
        return f"torch.{name}"
    return f"{mod}.{name}" if mod else name


# -- modules -----------------------------------------------------------------------------------------------


def _p(module: nn.Module, path: str, attr: str) -> tuple[str, torch.Tensor] | None:
    t = getattr(module, attr, None)
    if not isinstance(t, torch.Tensor):
        return None
    return (f"{path}.{attr}" if path else attr), t


@_module(nn.Linear)
def _m_linear(m: nn.Linear, path: str, c: Call):
    w = _p(m, path, "weight")
    b = _p(m, path, "bias")
    return OpSpec(OpKind.LINEAR, (c.arg(0),), LinearParams(m.in_features, m.out_features, b is not None),
                  linear_weight(*w), _bias(*b) if b else None)


@_module(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _m_conv(m, path: str, c: Call):
    w, b = _p(m, path, "weight"), _p(m, path, "bias")
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    params, stats = conv_params_and_weight(w[0], w[1], m.stride, m.padding, m.dilation, m.groups, transposed,
                                           m.output_padding if transposed else 0, b is not None)
    return OpSpec(OpKind.CONV, (c.arg(0),), params, stats, _bias(*b) if b else None)


@_module(nn.Embedding)
def _m_embedding(m: nn.Embedding, path: str, c: Call):
    w = _p(m, path, "weight")
    return OpSpec(OpKind.EMBEDDING, (c.arg(0),), EmbeddingParams(m.num_embeddings, m.embedding_dim, m.padding_idx),
                  WeightStats.of(*w, 1, 1))


def _m_norm(kind: NormKind):
    def handler(m, path: str, c: Call):
        w, b = _p(m, path, "weight"), _p(m, path, "bias")
        extra: dict[str, Any] = {}
        if kind is NormKind.BATCH:
            extra["uses_batch_stats"] = m.training or not m.track_running_stats
            extra["num_features"] = m.num_features
        elif kind is NormKind.INSTANCE:
            extra["num_features"] = m.num_features
        elif kind is NormKind.GROUP:
            extra.update(num_groups=m.num_groups, num_features=m.num_channels)
        elif kind in (NormKind.LAYER, NormKind.RMS):
            shape = tuple(m.normalized_shape)
            extra.update(normalized_shape=shape, num_features=shape[-1])
        params = NormParams(kind, eps=float(m.eps if getattr(m, "eps", None) is not None else 1e-5),
                            affine=w is not None, weight_rms=_rms(w[1]) if w else 1.0,
                            bias_rms=_rms(b[1]) if b else 0.0, **extra)
        return OpSpec(OpKind.NORM, (c.arg(0),), params,
                      WeightStats.of(*w, 1, 1) if w else None, _bias(*b) if b else None)

    return handler


MODULES.update({t: _m_norm(NormKind.BATCH) for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)})
MODULES.update({t: _m_norm(NormKind.INSTANCE) for t in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)})
MODULES[nn.LayerNorm] = _m_norm(NormKind.LAYER)
MODULES[nn.GroupNorm] = _m_norm(NormKind.GROUP)
if hasattr(nn, "RMSNorm"):
    MODULES[nn.RMSNorm] = _m_norm(NormKind.RMS)


def _m_act(fn: Activation, **read: str):
    def handler(m, path: str, c: Call):
        extra = {k: float(getattr(m, attr)) for k, attr in read.items()}
        if fn is Activation.GELU:
            extra = {"approximate": None if m.approximate == "none" else m.approximate}
        return OpSpec(OpKind.ACTIVATION, (c.arg(0),), ActivationParams(fn, **extra))

    return handler


MODULES.update({
    nn.ReLU: _m_act(Activation.RELU), nn.ReLU6: _m_act(Activation.RELU6),
    nn.LeakyReLU: _m_act(Activation.LEAKY_RELU, negative_slope="negative_slope"),
    nn.ELU: _m_act(Activation.ELU, alpha="alpha"), nn.CELU: _m_act(Activation.CELU, alpha="alpha"),
    nn.SELU: _m_act(Activation.SELU), nn.GELU: _m_act(Activation.GELU), nn.SiLU: _m_act(Activation.SILU),
    nn.Mish: _m_act(Activation.MISH), nn.Softplus: _m_act(Activation.SOFTPLUS, beta="beta", threshold="threshold"),
    nn.Tanh: _m_act(Activation.TANH), nn.Sigmoid: _m_act(Activation.SIGMOID),
    nn.Hardtanh: _m_act(Activation.HARDTANH, min_val="min_val", max_val="max_val"),
    nn.Hardsigmoid: _m_act(Activation.HARDSIGMOID), nn.Hardswish: _m_act(Activation.HARDSWISH),
    nn.Softsign: _m_act(Activation.SOFTSIGN), nn.Tanhshrink: _m_act(Activation.TANHSHRINK),
    nn.LogSigmoid: _m_act(Activation.LOGSIGMOID), nn.RReLU: _m_act(Activation.RRELU),
})


@_module(nn.PReLU)
def _m_prelu(m: nn.PReLU, path: str, c: Call):
    slope = m.weight.detach().float().mean().item() if not m.weight.is_meta else 0.25
    return OpSpec(OpKind.ACTIVATION, (c.arg(0),), ActivationParams(Activation.PRELU, negative_slope=slope))


@_module(nn.Identity, nn.Flatten, nn.Unflatten, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.ZeroPad2d,
         nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
         nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ChannelShuffle)
def _m_passthrough(m, path: str, c: Call):
    return OpSpec(OpKind.PASSTHROUGH, (c.arg(0),))


@_module(nn.Softmax, nn.LogSoftmax, nn.Softmax2d)
def _m_softmax(m, path: str, c: Call):
    dim = getattr(m, "dim", -3)
    return OpSpec(OpKind.SOFTMAX, (c.arg(0),),
                  SoftmaxParams(dim if dim is not None else -1, log=isinstance(m, nn.LogSoftmax)))


@_module(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
def _m_dropout(m, path: str, c: Call):
    return OpSpec(OpKind.DROPOUT, (c.arg(0),), DropoutParams(float(m.p), True, m.training))


def _m_pool(kind: PoolKind):
    def handler(m, path: str, c: Call):
        if kind in (PoolKind.ADAPTIVE_AVG, PoolKind.ADAPTIVE_MAX):
            size = m.output_size
            return OpSpec(OpKind.POOL, (c.arg(0),),
                          PoolParams(kind, output_size=_tup(size) if size is not None else ()))
        k = _tup(m.kernel_size)
        return OpSpec(OpKind.POOL, (c.arg(0),), PoolParams(kind, k, _tup(m.stride) if m.stride else k))

    return handler


MODULES.update({t: _m_pool(PoolKind.MAX) for t in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)})
MODULES.update({t: _m_pool(PoolKind.AVG) for t in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)})
MODULES.update({t: _m_pool(PoolKind.ADAPTIVE_AVG)
                for t in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)})
MODULES.update({t: _m_pool(PoolKind.ADAPTIVE_MAX)
                for t in (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)})


@_module(nn.RNN, nn.LSTM, nn.GRU)
def _m_recurrent(m: nn.RNNBase, path: str, c: Call):
    mode = {"RNN_TANH": RecurrentMode.RNN_TANH, "RNN_RELU": RecurrentMode.RNN_RELU,
            "LSTM": RecurrentMode.LSTM, "GRU": RecurrentMode.GRU}[m.mode]
    x = c.arg(0)
    seq = None
    if isinstance(x, Ref) and x.shape and len(x.shape) >= 2:
        seq = x.shape[1] if m.batch_first and len(x.shape) == 3 else x.shape[0]
    radii, hidden = [], []
    for name in m._flat_weights_names:
        if name.startswith("weight_hh"):
            w = getattr(m, name)
            hidden.append(WeightStats.of(f"{path}.{name}" if path else name, w, m.hidden_size, m.hidden_size))
            if mode in (RecurrentMode.RNN_TANH, RecurrentMode.RNN_RELU) and not w.is_meta:
                radii.append(spectral_radius(w))
    first = _p(m, path, "weight_ih_l0")
    gates = first[1].shape[0] // m.hidden_size
    params = RecurrentParams(mode, m.input_size, m.hidden_size, m.num_layers, m.bidirectional, m.batch_first, seq,
                             tuple(radii), tuple(hidden))
    stats = WeightStats.of(*first, m.input_size, first[1].shape[0] // gates)
    return OpSpec(OpKind.RECURRENT, (x,) if isinstance(x, Ref) else (), params, stats)


def spectral_radius(w: torch.Tensor) -> float:
    """Largest |eigenvalue| of a square matrix."""
    with torch.no_grad():
        return torch.linalg.eigvals(w.detach().double().cpu()).abs().max().item()


def module_spec(module: nn.Module, path: str, call: Call) -> OpSpec | None:
    """The spec for a leaf module call, or None when the module type has no entry."""
    for cls in type(module).__mro__:
        handler = MODULES.get(cls)
        if handler is not None:
            return handler(module, path, call)
    return None


def is_known_leaf(module: nn.Module) -> bool:
    """A module initlint understands as one op: a table entry whose ``forward`` was not overridden."""
    for cls in type(module).__mro__:
        if cls in MODULES:
            return type(module).forward is cls.forward
    return False


def function_spec(call: Call) -> OpSpec | None:
    """``None`` for non-tensor calls; an UNKNOWN spec for calls missing from the table."""
    if call.name in NON_TENSOR:
        return None
    handler = FUNCTIONS.get(call.name)
    if handler is None:
        return OpSpec(OpKind.UNKNOWN, tuple(r for r in call.refs() if not r.is_param))
    spec = handler(call)
    if spec is None:
        return None
    bad = [r for r in spec.inputs if not isinstance(r, Ref)]
    if bad:  # an operand we expected to be a tensor was not one: no semantics
        return OpSpec(OpKind.UNKNOWN, tuple(r for r in call.refs() if not r.is_param))
    return _keep_trainable(spec, call)


def _keep_trainable(spec: OpSpec, call: Call) -> OpSpec:
    """Weight statistics that a handler rebuilt from a parameter operand's detached view keep the operand's
    ``trainable``: without this, every weight of an exported graph read as frozen."""
    trainable = {r.op.weight.name for r in call.refs()
                 if r.is_param and r.op.weight is not None and r.op.weight.trainable}
    changes = {attr: dataclasses.replace(stats, trainable=True)
               for attr, stats in (("weight", spec.weight), ("bias", spec.bias))
               if stats is not None and not stats.trainable and stats.name in trainable}
    return dataclasses.replace(spec, **changes) if changes else spec


def flatten_refs(value: Any) -> list[Ref]:
    out: list[Ref] = []
    if isinstance(value, Ref):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            out.extend(flatten_refs(v))
    elif isinstance(value, dict):
        for v in value.values():
            out.extend(flatten_refs(v))
    return out


__all__ = ["Call", "OpSpec", "Ref", "OPAQUE", "Opaque", "FUNCTIONS", "MODULES", "function_name", "display_target",
           "module_spec", "function_spec", "is_known_leaf", "flatten_refs", "Sequence", "field"]
