"""One vocabulary for every capture: tables from what was called to an :class:`~initlint.ops.Op`.

This module holds the records (:class:`Ref`, :class:`Call`, :class:`OpSpec`), the two tables and the dispatch;
the handlers live in :mod:`.functions` and :mod:`.modules`.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..ops import ConvParams, Op, OpKind, OpParams, WeightStats, quick_init


@quick_init
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


@quick_init
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
        return tuple(map(int, v))
    return (int(v),) * (n or 1)


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


def _rms(t: torch.Tensor | None, stats: WeightStats | None = None) -> float | None:
    """The root mean square in float32. ``stats``: the tensor's statistics, whose mean is the answer when every
    element is the same whole number (a norm's ones and zeros) small enough that float32 sums its squares exactly."""
    if t is None or t.is_meta:
        return None
    if stats is not None and stats.constant and stats.mean.is_integer() and stats.mean**2 * t.numel() < 2.0**24:
        return abs(stats.mean) + 0.0
    return t.detach().float().square().mean().sqrt().item()


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


def module_spec(module: nn.Module, path: str, call: Call) -> OpSpec | None:
    """The spec for a leaf module call, or None when the module type has no entry."""
    for cls in type(module).__mro__:
        handler = MODULES.get(cls)
        if handler is not None:
            spec = handler(module, path, call)
            if not all([isinstance(r, Ref) for r in spec.inputs]):  # fed by a value the capture could not follow
                return OpSpec(spec.kind, tuple(r for r in spec.inputs if isinstance(r, Ref)), spec.params,
                              spec.weight, spec.bias, spec.target)
            return spec
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
        if call.name == "getattr" and call.out_shape is not None:  # x.real, x.T, x.data: a view of x
            return OpSpec(OpKind.PASSTHROUGH, tuple(call.refs()[:1]))
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
           "module_spec", "function_spec", "is_known_leaf", "flatten_refs"]


from . import functions, modules  # noqa: E402  (importing them fills FUNCTIONS and MODULES)
from .modules import spectral_radius  # noqa: E402

__all__ += ["functions", "modules", "spectral_radius"]
