"""The last rung: one forward pass with hooks on every leaf module; each leaf call is one op.

Coarse but never fails where the forward itself runs: functional code between modules is invisible, so a
leaf whose input was made by such code is fed from an ``UNKNOWN`` op standing for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..inputs import ExampleInputs
from ..ops import Capture, Location, Op, OpKind
from ..sources import user_frame
from .assemble import Assembler, shape_and_dtype
from .normalize import Call, Ref, is_known_leaf


def capture(model: nn.Module, inputs: ExampleInputs, name: str, sites: dict[int, Location],
            notes: tuple[str, ...] = ()):
    asm = Assembler(model, sites)
    producer: dict[int, Ref] = {}  # id(tensor) -> op that produced it
    keep: list[torch.Tensor] = []  # keeps ids unique while the pass runs
    for i, t in enumerate(_flat(inputs.args) + _flat(list(inputs.kwargs.values()))):
        shape, dtype = shape_and_dtype(t)
        producer[id(t)] = asm.add(Op(f"input_{i}", OpKind.INPUT, "input", shape=shape, dtype=dtype))
    paths = {m: p for p, m in model.named_modules()}
    leaves = [m for m in model.modules() if not list(m.children()) or is_known_leaf(m)]
    last: list[Ref] = list(producer.values())[:1]
    count = [0]

    def hook(module, args, output):
        path = paths.get(module, "")
        refs = []
        for t in _flat(args):
            ref = producer.get(id(t))
            if ref is None:  # made by functional code we did not see
                shape, dtype = shape_and_dtype(t)
                count[0] += 1
                ref = asm.add(Op(f"functional_{count[0]}", OpKind.UNKNOWN, "<functional code>",
                                 inputs=tuple(r.name for r in last[-1:]), shape=shape, dtype=dtype))
            refs.append(ref)
        call = Call(type(module).__name__, refs + list(args[len(refs):]), {})
        shape, dtype = shape_and_dtype(output)
        name_ = path.replace(".", "_") or "root"
        ref = asm.call(name_, call, f"nn.{type(module).__name__}", path, user_frame(2), shape, dtype, leaf=module)
        for t in _flat(output):
            producer[id(t)] = ref
            keep.append(t)
        last.append(ref)

    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            out = model(*inputs.args, **inputs.kwargs)
    finally:
        for h in handles:
            h.remove()
    outputs = []
    for t in _flat(out):
        ref = producer.get(id(t))
        if ref is None:  # computed after the last module by code we did not see
            shape, dtype = shape_and_dtype(t)
            count[0] += 1
            ref = asm.add(Op(f"functional_{count[0]}", OpKind.UNKNOWN, "<functional code>",
                             inputs=tuple(r.name for r in last[-1:]), shape=shape, dtype=dtype))
        outputs.append(ref)
    return asm.finish(name, Capture.HOOKS, outputs, notes)


def _flat(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat(v)]
    if isinstance(value, dict) or hasattr(value, "values"):
        try:
            return [t for v in value.values() for t in _flat(v)]
        except TypeError:
            return []
    return []
