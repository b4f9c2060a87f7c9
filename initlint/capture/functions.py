"""Handlers for torch functions, tensor methods, ``operator`` builtins and ATen overloads, by canonical name.

Each handler reads a :class:`~initlint.capture.normalize.Call` whose tensor operands are already resolved to
:class:`~initlint.capture.normalize.Ref` and returns an :class:`~initlint.capture.normalize.OpSpec`, or ``None``
for a call producing no tensor. Importing this module fills :data:`~initlint.capture.normalize.FUNCTIONS`.
"""

from __future__ import annotations

import math

import torch

from ..ops import (
    Activation,
    ActivationParams,
    AttentionParams,
    CompareParams,
    ConcatParams,
    DropoutParams,
    EmbeddingParams,
    LinearParams,
    MathFn,
    MathParams,
    MatmulParams,
    NormKind,
    NormParams,
    OpKind,
    PoolKind,
    PoolParams,
    RandomDist,
    RandomParams,
    Reduction,
    ReduceParams,
    ScaleParams,
    SoftmaxParams,
    WeightStats,
)
from .normalize import (
    FUNCTIONS,
    Call,
    OpSpec,
    Ref,
    _bias,
    _num,
    _on,
    _rms,
    _tup,
    conv_params_and_weight,
    linear_weight,
)


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
    w_stats = WeightStats.of(*pw, 1, 1) if pw and pw[1] is not None else None
    b_stats = _bias(*pb) if pb else None
    params = NormParams(
        kind, eps=float(eps) if eps is not None else 1e-5, affine=pw is not None,
        weight_rms=_rms(pw[1], w_stats) if pw else 1.0, bias_rms=_rms(pb[1], b_stats) if pb else 0.0, **extra,
    )
    return OpSpec(OpKind.NORM, (x,), params, w_stats, b_stats)


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


DROPOUTS = ("dropout", "native_dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
            "dropout1d", "dropout2d", "dropout3d")
RANDOMS = ("rand", "randn", "rand_like", "randn_like", "bernoulli", "normal", "uniform", "randint", "randint_like")


@_on(*DROPOUTS)
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


@_on(*RANDOMS)
def _random(c: Call):
    dist = {"randn": RandomDist.NORMAL, "randn_like": RandomDist.NORMAL, "normal": RandomDist.NORMAL,
            "bernoulli": RandomDist.BERNOULLI}.get(c.name, RandomDist.UNIFORM)
    p = _num(c.arg(1, "p")) if c.name == "bernoulli" else None
    return OpSpec(OpKind.RANDOM, (), RandomParams(dist, p))


_FACTORIES = ("arange", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "empty", "empty_like",
              "tensor", "scalar_tensor", "eye", "linspace", "new_zeros", "new_ones", "new_full", "new_empty",
              "empty_strided", "triu_indices", "tril_indices")
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
    "dropout_", "flatten_dense_tensors", "copy", "lift", "lift_fresh_copy", "slice_scatter", "select_scatter",
    "tile", "broadcast_to", "channel_shuffle", "cumsum_", "zero_",
)
for _n in _PASSTHROUGH:
    FUNCTIONS[_n] = lambda c: OpSpec(OpKind.PASSTHROUGH, tuple(r for r in c.refs()[:1]))
