"""The vocabulary of ops every capture is normalized into.

Rules and the variance engine see only these records: an :class:`Op` with a closed :class:`OpKind`, typed
parameters for its kind, statistics of its weight with the true fans, and the source lines behind it. Which
capture produced the op (``torch.fx``, ``torch.export`` or module hooks) never shows here.

>>> op = Op(name="fc", kind=OpKind.LINEAR, target="nn.Linear", params=LinearParams(4, 2, bias=True))
>>> op.kind.has_weight, op.params.out_features
(True, 2)
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Union

import torch


def quick_init(cls: type) -> type:
    """A frozen dataclass whose ``__init__`` writes the new instance's ``__dict__`` directly, where the one
    ``dataclass`` generates calls ``object.__setattr__`` once per field (7 us for an :class:`Op`'s 14 fields,
    1.5 us this way). Same signature, defaults, instance and frozenness; for classes whose fields all take
    plain defaults or none (no ``default_factory``, ``InitVar``, ``kw_only`` or ``__post_init__``), which
    is checked here. Applied to the records a lint makes by the hundred."""
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__") or "__slots__" in vars(cls):
        raise TypeError(f"quick_init: {cls.__name__} is not a plain dataclass")
    names, params, defaults = [], [], {}
    for f in dataclasses.fields(cls):
        if not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"quick_init: {cls.__name__}.{f.name} needs the generated __init__")
        names.append(f.name)
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            defaults[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
    body = "".join(f"    d[{n!r}] = {n}\n" for n in names) or "    pass\n"
    source = f"def __init__(self, {', '.join(params)}):\n    d = self.__dict__\n{body}"
    namespace: dict = {}
    exec(source, defaults, namespace)  # noqa: S102 - the source is built from the field names above
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init
    return cls


class OpKind(enum.Enum):
    """What an op does to the signal; one transfer function per kind in the variance engine."""

    INPUT = "input"  # a model input
    OUTPUT = "output"  # the model's output (inputs: the tensors returned)
    PARAM = "param"  # a parameter, buffer or constant tensor used as an operand (not as a layer weight)
    FACTORY = "factory"  # a tensor created in forward from nothing: arange, zeros, ones, full
    RANDOM = "random"  # rand/randn/bernoulli and their *_like versions
    LINEAR = "linear"
    CONV = "conv"  # params.transposed tells transposed convs apart
    EMBEDDING = "embedding"
    NORM = "norm"  # params.kind tells BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm apart
    ACTIVATION = "activation"
    ADD = "add"  # sum of two tensor operands (a PARAM operand included)
    SUB = "sub"
    MUL = "mul"  # elementwise product of two signals (gating, masks)
    DIV = "div"  # elementwise quotient of two signals
    SCALE = "scale"  # x * a + b with a, b constants or parameters (LayerScale, 1/sqrt(2), x / tau)
    MATH = "math"  # elementwise pow, sqrt, rsqrt, exp, log, abs, reciprocal
    COMPARE = "compare"  # gt, lt, ge, le, eq, ne: boolean masks
    WHERE = "where"  # masked_fill, where
    MATMUL = "matmul"  # product of two signals: attention logits, attention-weighted values
    SOFTMAX = "softmax"
    ATTENTION = "attention"  # scaled_dot_product_attention
    CONCAT = "concat"  # cat and stack
    DROPOUT = "dropout"
    POOL = "pool"
    REDUCE = "reduce"  # mean, sum, max over dimensions
    PASSTHROUGH = "passthrough"  # reshape-like: view, permute, transpose, getitem, slicing, casts, padding
    RECURRENT = "recurrent"  # RNN, LSTM, GRU
    UNKNOWN = "unknown"  # no known semantics: listed in coverage

    # Members are singletons compared by identity: hash them by identity too, in C, not by Enum's Python
    # ``hash(self._name_)`` (kinds are looked up in sets and tables hundreds of times per lint).
    __hash__ = object.__hash__

    @property
    def has_weight(self) -> bool:
        return self in _WEIGHTED


_WEIGHTED = frozenset({OpKind.LINEAR, OpKind.CONV, OpKind.EMBEDDING, OpKind.RECURRENT})


class Capture(enum.Enum):
    """Which rung of the capture ladder produced a graph."""

    FX = "fx"
    EXPORT = "export"
    HOOKS = "hooks"


class NormKind(enum.Enum):
    __hash__ = object.__hash__  # as OpKind's

    BATCH = "batch_norm"
    LAYER = "layer_norm"
    GROUP = "group_norm"
    INSTANCE = "instance_norm"
    RMS = "rms_norm"
    LOCAL_RESPONSE = "local_response_norm"


class Activation(enum.Enum):
    __hash__ = object.__hash__  # as OpKind's

    RELU = "relu"
    RELU6 = "relu6"
    LEAKY_RELU = "leaky_relu"
    PRELU = "prelu"
    RRELU = "rrelu"
    ELU = "elu"
    CELU = "celu"
    SELU = "selu"
    GELU = "gelu"
    SILU = "silu"
    MISH = "mish"
    SOFTPLUS = "softplus"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    HARDTANH = "hardtanh"
    HARDSIGMOID = "hardsigmoid"
    HARDSWISH = "hardswish"
    SOFTSIGN = "softsign"
    TANHSHRINK = "tanhshrink"
    LOGSIGMOID = "logsigmoid"
    IDENTITY = "identity"


class MathFn(enum.Enum):
    __hash__ = object.__hash__  # as OpKind's

    POW = "pow"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    EXP = "exp"
    LOG = "log"
    ABS = "abs"
    RECIPROCAL = "reciprocal"
    SQUARE = "square"
    SIN = "sin"
    COS = "cos"
    CLAMP = "clamp"


class Reduction(enum.Enum):
    __hash__ = object.__hash__  # as OpKind's

    MEAN = "mean"
    SUM = "sum"
    MAX = "max"
    MIN = "min"
    NORM = "norm"
    VAR = "var"
    STD = "std"


class PoolKind(enum.Enum):
    __hash__ = object.__hash__  # as OpKind's

    MAX = "max"
    AVG = "avg"
    ADAPTIVE_MAX = "adaptive_max"
    ADAPTIVE_AVG = "adaptive_avg"
    LP = "lp"


class RecurrentMode(enum.Enum):
    RNN_TANH = "rnn_tanh"
    RNN_RELU = "rnn_relu"
    LSTM = "lstm"
    GRU = "gru"


class RandomDist(enum.Enum):
    UNIFORM = "uniform"  # U[0, 1)
    NORMAL = "normal"  # N(0, 1)
    BERNOULLI = "bernoulli"


# -- per-kind parameters -----------------------------------------------------------------------------------


@quick_init
@dataclass(frozen=True)
class LinearParams:
    in_features: int
    out_features: int
    bias: bool = True


@quick_init
@dataclass(frozen=True)
class ConvParams:
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str = (0,)
    dilation: tuple[int, ...] = (1,)
    groups: int = 1
    transposed: bool = False
    output_padding: tuple[int, ...] = (0,)
    bias: bool = True

    @property
    def dims(self) -> int:
        return len(self.kernel_size)

    @property
    def taps(self) -> int:
        """Kernel elements per channel: prod(kernel_size)."""
        return math.prod(self.kernel_size)

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels


@quick_init
@dataclass(frozen=True)
class EmbeddingParams:
    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None = None


@quick_init
@dataclass(frozen=True)
class NormParams:
    kind: NormKind
    num_features: int | None = None  # channels (BatchNorm, GroupNorm, InstanceNorm) or last-dim size
    normalized_shape: tuple[int, ...] = ()
    eps: float = 1e-5
    affine: bool = True
    num_groups: int | None = None
    weight_rms: float | None = None  # root mean square of the affine weight (1.0 when absent)
    bias_rms: float | None = None
    uses_batch_stats: bool = True  # BatchNorm in training mode (or without running stats)


@quick_init
@dataclass(frozen=True)
class ActivationParams:
    fn: Activation
    negative_slope: float | None = None  # leaky ReLU, PReLU (mean of its weight)
    alpha: float | None = None  # ELU, CELU
    beta: float | None = None  # softplus
    threshold: float | None = None  # softplus
    approximate: str | None = None  # GELU "tanh"
    min_val: float | None = None  # hardtanh
    max_val: float | None = None


@quick_init
@dataclass(frozen=True)
class ScaleParams:
    """``y = x * factor + shift``; ``factor`` is the root mean square of a parameter when ``param`` is set."""

    factor: float = 1.0
    shift: float = 0.0
    param: str | None = None  # qualified name of the parameter or buffer the factor comes from
    learned: bool = False  # the factor is a trainable parameter (LayerScale, ReZero alpha)


@quick_init
@dataclass(frozen=True)
class MathParams:
    fn: MathFn
    exponent: float | None = None  # POW
    min_val: float | None = None  # CLAMP
    max_val: float | None = None


@quick_init
@dataclass(frozen=True)
class CompareParams:
    op: str  # "gt", "lt", "ge", "le", "eq", "ne"
    threshold: float | None = None  # the scalar compared with, when it is one


@quick_init
@dataclass(frozen=True)
class RandomParams:
    dist: RandomDist
    p: float | None = None  # BERNOULLI probability of a one


@quick_init
@dataclass(frozen=True)
class SoftmaxParams:
    dim: int = -1
    log: bool = False


@quick_init
@dataclass(frozen=True)
class AttentionParams:
    """``softmax(q k^T * scale) v``; ``scale is None`` means PyTorch's default ``1/sqrt(head_dim)``."""

    scale: float | None = None
    head_dim: int | None = None
    seq_len: int | None = None  # keys per query
    causal: bool = False
    dropout_p: float = 0.0
    has_mask: bool = False

    @property
    def effective_scale(self) -> float | None:
        if self.scale is not None:
            return self.scale
        return None if not self.head_dim else 1.0 / math.sqrt(self.head_dim)


@quick_init
@dataclass(frozen=True)
class MatmulParams:
    contracted: int | None = None  # size of the summed dimension
    transposed_rhs: bool = False  # rhs comes from a transpose: q @ k^T


@quick_init
@dataclass(frozen=True)
class ConcatParams:
    dim: int
    sizes: tuple[int, ...] = ()  # each operand's extent along dim (1 each for stack)
    stack: bool = False


@quick_init
@dataclass(frozen=True)
class DropoutParams:
    p: float
    inverted: bool = True  # PyTorch's dropout divides by 1 - p in training
    active: bool = True  # training mode (the module's or F.dropout's `training`)


@quick_init
@dataclass(frozen=True)
class PoolParams:
    kind: PoolKind
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    output_size: tuple[int, ...] = ()


@quick_init
@dataclass(frozen=True)
class ReduceParams:
    kind: Reduction
    dims: tuple[int, ...] = ()
    count: int | None = None  # elements reduced into each output


@quick_init
@dataclass(frozen=True)
class RecurrentParams:
    mode: RecurrentMode
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    seq_len: int | None = None
    spectral_radius: tuple[float, ...] = ()  # per layer (and direction) of W_hh for RNN modes
    hidden_weights: tuple["WeightStats", ...] = ()  # W_hh of each layer and direction


OpParams = Union[
    LinearParams,
    ConvParams,
    EmbeddingParams,
    NormParams,
    ActivationParams,
    ScaleParams,
    MathParams,
    CompareParams,
    RandomParams,
    SoftmaxParams,
    AttentionParams,
    MatmulParams,
    ConcatParams,
    DropoutParams,
    PoolParams,
    ReduceParams,
    RecurrentParams,
    None,
]


# -- records -----------------------------------------------------------------------------------------------


@quick_init
@dataclass(frozen=True)
class Location:
    """A line of the user's source code."""

    file: str
    line: int
    function: str | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@quick_init
@dataclass(frozen=True)
class WeightStats:
    """Statistics of one weight tensor, with the fans that describe how it is really used.

    ``fan_in`` is the number of terms summed into one output (averaged over the phases of a transposed
    conv); ``fan_out`` is the number of outputs one input feeds (averaged over a strided conv's positions).
    ``torch_fan_in``/``torch_fan_out`` are what ``torch.nn.init`` computes for the same tensor, which is wrong
    for grouped convs' fan-out and swapped for transposed convs.
    """

    name: str  # qualified parameter name, e.g. "body.0.conv.weight"
    shape: tuple[int, ...]
    mean: float
    std: float
    rms: float  # root mean square
    fan_in: float
    fan_out: float
    torch_fan_in: int | None = None
    torch_fan_out: int | None = None
    constant: bool = False  # every element equal (zero included)
    trainable: bool = False  # a parameter that requires grad (not a buffer or constant)
    tensor: torch.Tensor | None = field(default=None, repr=False, compare=False)  # read-only view; None on meta

    @property
    def variance(self) -> float:
        return self.std**2

    @property
    def second_moment(self) -> float:
        return self.rms**2

    @property
    def zero(self) -> bool:
        return self.constant and self.rms == 0.0

    @classmethod
    def of(
        cls,
        name: str,
        tensor: torch.Tensor,
        fan_in: float,
        fan_out: float,
        torch_fans: tuple[int, int] | None = None,
    ) -> "WeightStats":
        t = tensor.detach()
        if t.is_meta or t.numel() == 0:
            mean = std = rms = float("nan")
            constant = False
            ref = None
        else:
            # Two passes in float64 (mean, then the centred sum of squares by a dot product), one sync: exact,
            # and 5x faster than torch.var_mean's Welford pass on conv-sized weights on one CPU thread. The
            # extremes read the tensor itself (widening is exact), and the float64 copy is centred in place when
            # it is a copy: one large allocation, not two (1.9 -> 0.9 ms on a 1000 x 1000 weight).
            n = t.numel()
            if t.is_cpu and t.is_floating_point():  # four reads cost less than a stack
                lo, hi = torch.aminmax(t)
                low, high = lo.item(), hi.item()
                if low == high and low.is_integer() and abs(low) * n < 2.0**53:
                    # every element the same whole number (a norm's ones and zeros): every partial sum is exact,
                    # so the float64 mean is that number and the centred sum of squares 0, as computed below
                    mean, sq = low + 0.0, 0.0
                else:
                    f = t.reshape(-1).double()
                    # torch's mean on the CPU is this sum divided by n (ATen's mean_out: sum, then div_), so the
                    # same number, for one op less; the copy is centred by that number as a scalar
                    mean = f.sum().item() / n
                    c = f.sub_(mean) if f.data_ptr() != t.data_ptr() else f - mean
                    sq = torch.dot(c, c).item()
            else:  # elsewhere, one sync
                f = t.reshape(-1).double()
                lo, hi = torch.aminmax(t if t.is_floating_point() else f)
                m = f.mean()
                c = f.sub_(m) if f.data_ptr() != t.data_ptr() else f - m
                if f.device.type == "cpu":
                    mean, sq, low, high = m.item(), torch.dot(c, c).item(), lo.item(), hi.item()
                else:
                    mean, sq, low, high = torch.stack([m, torch.dot(c, c), lo, hi]).tolist()
            var = max(sq / n, 0.0)
            std, rms = math.sqrt(var), math.sqrt(var + mean * mean)
            constant = low == high
            ref = t
        tf_in, tf_out = torch_fans if torch_fans is not None else (None, None)
        trainable = isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad
        return cls(name, tuple(t.shape), mean, std, rms, float(fan_in), float(fan_out), tf_in, tf_out, constant,
                   trainable, ref)


@quick_init
@dataclass(frozen=True)
class Op:
    """One node of a captured model, in initlint's vocabulary."""

    name: str  # unique within the graph
    kind: OpKind
    target: str  # what was called, for people and for coverage: "nn.Linear", "torch.add", "aten.add.Tensor"
    inputs: tuple[str, ...] = ()  # names of the ops producing the tensor operands, in argument order
    module: str = ""  # qualified name of the module this op belongs to ("" for the root)
    module_type: str = ""  # class name of that module
    shape: tuple[int, ...] | None = None  # output shape (the first tensor, for tuple outputs)
    dtype: str | None = None
    params: OpParams = None
    weight: WeightStats | None = None
    bias: WeightStats | None = None
    location: Location | None = None  # the forward line that produced the op
    defined_at: Location | None = None  # where the module behind it was constructed

    @property
    def where(self) -> Location | None:
        """The best line to point a finding at: the call in forward, else the construction."""
        return self.location or self.defined_at

    @property
    def numel(self) -> int | None:
        return None if self.shape is None else math.prod(self.shape)
