"""Turning a walk over captured nodes into ops: naming, parameters as operands, dead-code pruning."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..graph import ModelGraph
from ..ops import Capture, Location, Op, OpKind, WeightStats
from .normalize import OPAQUE, Call, OpSpec, Ref, flatten_refs, function_spec, module_spec


class Assembler:
    """Collects ops in topological order; the fx and export walkers drive it node by node."""

    def __init__(self, model: nn.Module, sites: dict[int, Location]):
        self.model = model
        self.sites = sites
        self.ops: dict[str, Op] = {}
        self._modules = dict(model.named_modules())
        self._param_names: dict[int, str] | None = None  # built on the first get_attr: most graphs have none

    # -- sources ---------------------------------------------------------------------------------------------

    def add(self, op: Op) -> Ref:
        name, i = op.name, 1
        while name in self.ops:
            name, i = f"{op.name}_{i}", i + 1
        if name != op.name:
            op = Op(**{**op.__dict__, "name": name})
        self.ops[name] = op
        return Ref(op)

    def param(self, qualname: str, tensor: torch.Tensor, name: str | None = None) -> Ref:
        """A parameter, buffer or constant used as an operand; created once per name."""
        key = name or qualname.replace(".", "_")
        existing = self.ops.get(key)
        if existing is not None and existing.kind is OpKind.PARAM:
            return Ref(existing)
        module = qualname.rpartition(".")[0]
        stats = WeightStats.of(qualname, tensor, 1, 1)
        return self.add(Op(key, OpKind.PARAM, "parameter", module=module, module_type=self._type_of(module),
                           shape=tuple(tensor.shape), dtype=_dtype(tensor), weight=stats))

    def qualname_of(self, tensor: torch.Tensor) -> str | None:
        if self._param_names is None:
            names = {id(p): n for n, p in self.model.named_parameters(remove_duplicate=False)}
            names.update({id(b): n for n, b in self.model.named_buffers(remove_duplicate=False)})
            self._param_names = names
        return self._param_names.get(id(tensor))

    def module_at(self, path: str) -> nn.Module | None:
        return self._modules.get(path)

    def _type_of(self, path: str) -> str:
        m = self._modules.get(path)
        return type(m).__name__ if m is not None else ""

    def defined_at(self, path: str) -> Location | None:
        m = self._modules.get(path)
        return self.sites.get(id(m)) if m is not None else None

    # -- calls -----------------------------------------------------------------------------------------------

    def call(
        self,
        name: str,
        call: Call,
        target: str,
        module_path: str,
        location: Location | None,
        shape: tuple[int, ...] | None,
        dtype: str | None,
        leaf: nn.Module | None = None,
    ) -> Ref | Any:
        """Normalize one call; returns the Ref to its op, or OPAQUE for a call producing no tensor."""
        spec: OpSpec | None
        if leaf is not None:
            spec = module_spec(leaf, module_path, call)
            if spec is None:
                spec = OpSpec(OpKind.UNKNOWN, tuple(r for r in call.refs() if not r.is_param))
            owner, defined = module_path, self.sites.get(id(leaf))
        else:
            if shape is None and not _produces_tensor(call):
                return OPAQUE
            spec = function_spec(call)
            if spec is None:
                return OPAQUE
            owner = module_path
            defined = self.defined_at(owner) if spec.kind.has_weight or spec.kind is OpKind.NORM else None
        op = Op(
            name=name,
            kind=spec.kind,
            target=spec.target or target,
            inputs=tuple(r.name for r in spec.inputs),
            module=owner,
            module_type=self._type_of(owner),
            shape=shape,
            dtype=dtype,
            params=spec.params,
            weight=spec.weight,
            bias=spec.bias,
            location=location,
            defined_at=defined,
        )
        return self.add(op)

    def finish(self, model_name: str, capture: Capture, outputs: list[Ref], notes: tuple[str, ...]) -> ModelGraph:
        self.add(Op("output", OpKind.OUTPUT, "output", inputs=tuple(r.name for r in outputs)))
        live = _live(self.ops)
        ops = [op for op in self.ops.values() if op.name in live]
        return ModelGraph.build(model_name, capture, ops, notes)


def _produces_tensor(call: Call) -> bool:
    return call.name not in ("size", "dim", "getattr")


def _live(ops: dict[str, Op]) -> set[str]:
    """Ops that reach the output (buffer updates and unused results are dropped), plus the inputs."""
    live: set[str] = set()
    stack = [name for name, op in ops.items() if op.kind is OpKind.OUTPUT]
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        stack.extend(ops[name].inputs)
    live.update(name for name, op in ops.items() if op.kind is OpKind.INPUT)
    return live


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def shape_and_dtype(value: Any) -> tuple[tuple[int, ...] | None, str | None]:
    """From a tensor, a TensorMetadata, a fake tensor or a nest of them: the first tensor's shape and dtype."""
    if value is None:
        return None, None
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            shape = tuple(int(s) for s in value.shape)
        except TypeError:  # symbolic sizes
            shape = tuple(int(s) if isinstance(s, int) else -1 for s in value.shape)
        return shape, str(value.dtype).removeprefix("torch.")
    if isinstance(value, (list, tuple)):
        for v in value:
            s = shape_and_dtype(v)
            if s[0] is not None:
                return s
    if isinstance(value, dict):
        return shape_and_dtype(list(value.values()))
    return None, None


def numel(shape: tuple[int, ...] | None) -> int | None:
    return None if shape is None else math.prod(shape)


__all__ = ["Assembler", "shape_and_dtype", "flatten_refs", "OPAQUE"]
