"""The second rung: ``torch.export(strict=False)``, for models symbolic tracing cannot follow.

Export sees through control flow that depends on shapes (``nn.MultiheadAttention``, ``nn.TransformerEncoder``,
most ``transformers`` models) and records ATen ops with their module stack and source trace. Parameters
arrive as lifted placeholders, mapped back to their qualified names by the graph signature. A model whose
outputs export cannot flatten (a key/value cache object, say) is wrapped so that only its tensors come out.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..inputs import ExampleInputs
from ..ops import Capture, Location, Op, OpKind
from ..sources import from_stack_trace
from .assemble import OPAQUE, Assembler, shape_and_dtype
from .constants import FOLD_ELEMENTS, folds
from .normalize import Call, Ref, canonical, display_target, flatten_refs, function_name


class _TensorsOnly(nn.Module):
    """Returns the tensors found in the wrapped model's output, dropping cache objects and the like."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        return tuple(_tensors(self.model(*args, **kwargs)))


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return [t for v in value.values() for t in _tensors(v)] if hasattr(value, "values") else []
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export logs warnings with whole graph dumps when it gives up; the report's notes say why instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def export(model: nn.Module, inputs: ExampleInputs) -> tuple[torch.export.ExportedProgram, str]:
    """Export ``model``; returns the program and the prefix added to module paths by a wrapper ('' if none)."""
    with _quiet():
        return _export(model, inputs)


def _export(model: nn.Module, inputs: ExampleInputs) -> tuple[torch.export.ExportedProgram, str]:
    try:
        return torch.export.export(model, tuple(inputs.args), dict(inputs.kwargs), strict=False), ""
    except Exception as first:
        try:
            wrapped = _TensorsOnly(model)
            return torch.export.export(wrapped, tuple(inputs.args), dict(inputs.kwargs), strict=False), "model."
        except Exception:
            raise first from None


def to_graph(ep: torch.export.ExportedProgram, prefix: str, model: nn.Module, name: str,
             sites: dict[int, Location], notes: tuple[str, ...] = ()):
    asm = Assembler(model, sites)
    sig = ep.graph_signature
    lifted: dict[str, str] = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                              **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    state = {**dict(ep.state_dict), **dict(getattr(ep, "constants", {}) or {})}
    user_outputs = set(sig.user_outputs)
    env: dict[str, Any] = {}
    known: dict[str, Any] = {}  # node name -> its value, where it depends on no input and no parameter

    def strip(path: str) -> str:
        return path[len(prefix):] if prefix and path.startswith(prefix) else ("" if path == prefix[:-1] else path)

    def resolve(a):
        return torch.fx.node.map_arg(a, lambda n: env.get(n.name, OPAQUE))

    outputs: list[Ref] = []
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        shape, dtype = shape_and_dtype(val) if _is_tensorish(val) else (None, None)
        if node.op == "placeholder":
            if node.name in lifted:
                qual = lifted[node.name]
                tensor = _lookup(model, strip(qual), state.get(qual))
                env[node.name] = asm.param(strip(qual), tensor, node.name) if tensor is not None else OPAQUE
                if tensor is not None and node.name not in sig.inputs_to_parameters:
                    known[node.name] = tensor
            elif shape is not None:
                env[node.name] = asm.add(Op(node.name, OpKind.INPUT, "input", shape=shape, dtype=dtype))
            else:
                env[node.name] = OPAQUE
        elif node.op == "call_function":
            stack = node.meta.get("nn_module_stack") or {}
            owner = strip(next(reversed(stack.values()))[0]) if stack else ""
            if not isinstance(node.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
                fname = function_name(node.target)
            else:
                fname = canonical(node.target._opname) if isinstance(node.target, torch._ops.OpOverload) \
                    else function_name(node.target)
            call = Call(fname, list(resolve(node.args)), dict(resolve(node.kwargs)), aten=True, out_shape=shape)
            loc = from_stack_trace(node.meta.get("stack_trace"))
            if shape is None and fname != "getitem" and not _is_tensorish(val):
                env[node.name] = OPAQUE
                continue
            value = _evaluated(node, known)
            if value is not None:
                known[node.name] = value
                if folds(value):  # a table computed in forward from constants (rotary sin and cos): its values
                    env[node.name] = asm.param(node.name, value, node.name)
                    continue
            env[node.name] = asm.call(node.name, call, display_target(node.target), owner, loc, shape, dtype)
        elif node.op == "output":
            outs = node.args[0]
            refs = [env.get(o.name) for o in outs if isinstance(o, torch.fx.Node) and o.name in user_outputs]
            outputs = flatten_refs([r for r in refs if isinstance(r, Ref)])
    return asm.finish(name, Capture.EXPORT, outputs, notes)


def _is_tensorish(val) -> bool:
    if isinstance(val, torch.Tensor):
        return True
    if isinstance(val, (list, tuple)):
        return any(_is_tensorish(v) for v in val)
    return False


def _evaluated(node: torch.fx.Node, known: dict[str, Any]):
    """The value of an aten call whose tensor operands are all ``known`` (buffers, lifted constants, and what
    was computed from them and from literals: positions by ``arange``, rotary tables), or None. Random and
    mutating ops are never run."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload) or target._schema.is_mutable \
            or torch.Tag.nondeterministic_seeded in target.tags:
        return None
    if any(n.name not in known for n in node.all_input_nodes):
        return None
    args = torch.fx.node.map_arg(node.args, lambda n: known[n.name])
    kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: known[n.name])
    try:
        with torch.no_grad():
            value = target(*args, **kwargs)
    except Exception:  # noqa: BLE001 - what cannot be evaluated here stays estimated
        return None
    if not isinstance(value, torch.Tensor) or value.is_meta or value.numel() > FOLD_ELEMENTS:
        return None
    return value


def _lookup(model: nn.Module, qualname: str, fallback):
    """The real tensor behind a lifted name (the program's state_dict may hold detached copies)."""
    obj: Any = model
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        return fallback
    return obj if isinstance(obj, torch.Tensor) else fallback
