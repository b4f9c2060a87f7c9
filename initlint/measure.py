"""One forward and one backward pass that measures, per op, what the variance engine predicts.

The captured program is run again with a probe after every node that stands for an op: the probe reduces the
op's output to its second moment, mean and ``max |x|`` (two reductions, no copy kept) and hooks the tensor so
the backward pass reduces its gradient the same way. Activations are freed as in any training step, so the
memory is about that of one forward and backward pass.

Conventions, the same as the predictions': training mode (modules are put in ``train()``; an exported program
keeps the mode it was captured in), inputs as given, and the loss ``L = sum_i <y_i, r_i>`` over the float
outputs with ``r_i ~ N(0, 1)`` drawn from a generator seeded with ``LOSS_SEED + seed`` and scaled to a mean
square of exactly 1. The gradient is taken with
``torch.autograd.grad`` with respect to the inputs and the parameters, so no ``.grad`` is written; everything
else a pass can change (modes, BatchNorm running statistics, random number generators) is restored by
:func:`initlint.state.preserved`. With ``device`` other than the model's, a deep copy runs there.

>>> import torch
>>> from torch import nn
>>> from initlint.capture import capture_program
>>> from initlint.load import from_instance
>>> _ = torch.manual_seed(0)
>>> graph, program = capture_program(from_instance(nn.Sequential(nn.Linear(256, 256), nn.ReLU()),
...                                                torch.randn(64, 256)))
>>> s = measure(graph, program)["_1"]
>>> round(s.forward.second, 2), round(s.backward.second, 1)  # 1/3 then 1/2 forward; backward: unit loss
(0.17, 1.0)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .capture.program import Program
from .elementwise import SPLITS, base_name
from .errors import UsageError
from .graph import ModelGraph, Moments, Signal
from .inputs import ExampleInputs
from .ops import Capture, OpKind
from .state import preserved

DEVICES = ("auto", "cpu", "cuda")
LOSS_SEED = 0x1D5EED  # offset of the loss targets' generator from ``seed``


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` (or None): the GPU when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available", help="use --device cpu or auto")
    if device not in DEVICES:
        raise UsageError(f"unknown device `{device}`", help="use auto, cpu or cuda")
    return torch.device(device)


_TABLES = "recorder-tables"  # graph.memo key of a Recorder's tables of the graph


class Recorder:
    """Collects per-op statistics as small device tensors, read back once at the end."""

    def __init__(self, graph: ModelGraph):
        # tables of the graph, made once per graph (graph.memo) and only read: a probe stage makes a recorder
        # per pass, and building them cost a tenth of a small model's step
        tables = graph.memo.get(_TABLES)
        if tables is None:
            names = list(graph.ops)
            index = {n: i for i, n in enumerate(names)}
            no_backward = frozenset(index[op.name] for op in graph if base_name(op.target) in SPLITS)
            tables = graph.memo[_TABLES] = (names, index, no_backward, aliases(graph))
        self.names, self.index, self.no_backward, self.aliases = tables  # aliases: ops read as their producer
        self.fwd: list[tuple[int, torch.Tensor, int]] = []  # op index, [|x|, sum, min, max], numel
        self.bwd: list[tuple[int, torch.Tensor, int]] = []  # op index, [|g|, sum], numel
        self.handles: list[Any] = []  # hooks on leaf tensors (inputs, parameters), removed at the end
        self.hooked: set[int] = set()  # ops whose gradient a hook waits for, and those whose hook ran
        self.fired: set[int] = set()

    def probe(self, value: Any, idx: int) -> None:
        t = first_tensor(value)
        if t is None or t.numel() == 0 or t.is_complex():
            return
        x = t.detach()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point() else x
        # sums, not var_mean: on CPU these are vectorized passes, var_mean a slow Welford loop (50x)
        lo, hi = torch.aminmax(x)
        self.fwd.append((idx, torch.stack([torch.linalg.vector_norm(x), x.sum(), lo, hi]), x.numel()))
        if t.requires_grad and idx not in self.no_backward:
            self.hooked.add(idx)
            handle = t.register_hook(functools.partial(self._grad, idx))
            if t.grad_fn is None:
                self.handles.append(handle)

    def _grad(self, idx: int, g: torch.Tensor) -> None:
        self.fired.add(idx)
        g = g.detach()
        g = g.float() if g.dtype in (torch.float16, torch.bfloat16) else g
        self.bwd.append((idx, torch.stack([torch.linalg.vector_norm(g), g.sum()]), g.numel()))

    def signals(self) -> dict[str, Signal]:
        fwd, bwd = _readback(self.fwd, self.bwd)
        out = {}
        for idx, ((norm, total, lo, hi), n) in fwd.items():
            back = bwd.get(idx)
            grad = None if back is None else _moments(*back[0], back[1])
            out[self.names[idx]] = Signal(_moments(norm, total, n), grad, max(-lo, hi))
        for name, src in self.aliases.items():  # in topological order, so chains resolve
            if src in out:
                out[name] = out[src]
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _moments(norm: float, total: float, n: int) -> Moments:
    return Moments(norm * norm / n, total / n)


def _readback(fwd: list[tuple[int, torch.Tensor, int]], bwd: list[tuple[int, torch.Tensor, int]]) \
        -> tuple[dict[int, tuple[list[float], int]], dict[int, tuple[list[float], int]]]:
    """The recorded statistics per node, forward and backward, read back in one copy from the device: the per-op
    vectors concatenated as they are and widened to float64 once where they share a dtype and device (the same
    numbers as widening each, which costs a tensor op per recorded op and direction), else each widened first.
    A node that ran twice keeps its first call's."""
    items = fwd + bwd
    if not items:
        return {}, {}
    if len({t.dtype for _, t, _ in items}) == 1 and len({t.device for _, t, _ in items}) == 1:
        flat = torch.cat([t for _, t, _ in items]).to(torch.float64).cpu().tolist()
    else:
        flat = torch.cat([t.to("cpu", torch.float64) for _, t, _ in items]).tolist()
    out: tuple[dict, dict] = ({}, {})
    at = 0
    for k, (idx, t, n) in enumerate(items):
        size = t.numel()
        out[k >= len(fwd)].setdefault(idx, (flat[at:at + size], n))
        at += size
    return out


def measure(graph: ModelGraph, program: Program, device: str = "auto", seed: int = 0) -> Mapping[str, Signal]:
    """Measured :class:`~initlint.graph.Signal` per op name, for every op the pass could observe."""
    dev = resolve_device(device)
    model = program.model
    rec = Recorder(graph)
    with preserved(model), torch.enable_grad(), quiet():
        seed_device(dev, seed)
        try:
            _run(graph, program, rec, dev, seed)
        finally:
            rec.close()
            for value in program.cache.values():  # the recorder must not outlive its pass
                if isinstance(value, tuple) and isinstance(value[-1], Slot):
                    value[-1].recorder = None
    return rec.signals()


def seed_device(device: torch.device, seed: int) -> None:
    """``torch.manual_seed(seed)`` for a pass on ``device``: on the CPU only the CPU generator, the one the pass
    draws from (seeding every backend queues a lazy CUDA seeding with its traceback, a millisecond a call)."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(int(seed))
    else:
        torch.manual_seed(seed)


def _run(graph: ModelGraph, program: Program, rec: Recorder, dev: torch.device, seed: int) -> None:
    model = program.model
    here = device_of(model)
    moved = dev != here
    args, kwargs = program.call_args()
    args, kwargs = pytree.tree_map(functools.partial(prepare_input, dev), (args, kwargs))
    inputs = _inputs(graph, program, args, kwargs)
    if program.capture is Capture.HOOKS:
        target = copy.deepcopy(model).to(dev) if moved else model
        target.train()
        runner = functools.partial(hooks_forward, target, graph, rec)
    else:
        if program.capture is Capture.FX:
            model.train()
        module, slot = _instrumented(program, graph)
        if program.capture is Capture.FX:
            module.train()
        slot.recorder = rec
        target = copy.deepcopy(module).to(dev) if moved else module
        runner = target
    for name, t in inputs.items():
        rec.probe(t, rec.index[name])
    out = runner(*args, **kwargs)
    outs = [t for t in _flat(out) if t.is_floating_point() and t.requires_grad]
    leaves = gradient_leaves(inputs.values(), target)
    if not outs or not leaves:
        return
    loss = surrogate_loss(outs, seed)
    del out, outs
    torch.autograd.grad(loss, leaves, allow_unused=True)


def gradient_leaves(inputs, model: nn.Module) -> list[torch.Tensor]:
    """What the loss is differentiated by: the inputs that require grad and the trainable parameters, each
    once (through ``torch.autograd.grad`` only, so no ``.grad`` is ever written)."""
    leaves = [t for t in inputs if t.requires_grad]
    seen = {id(t) for t in leaves}
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            leaves.append(p)
            seen.add(id(p))
    return leaves


def surrogate_loss(outs, seed: int) -> torch.Tensor:
    """The loss convention ``sum_i <y_i, r_i>`` over the float outputs, ``r`` from :func:`loss_targets`."""
    gen = torch.Generator().manual_seed(LOSS_SEED + seed)  # not 0: r must not replay a seed-0 input draw
    return sum((o * loss_targets(o.shape, gen).to(o.device, o.dtype)).sum() for o in outs)


def loss_targets(shape, gen: torch.Generator) -> torch.Tensor:
    """``r ~ N(0, 1)`` scaled to a mean square of exactly 1: a small output (a batch of two, ten classes)
    would otherwise scale every measured gradient by its draw's chance second moment."""
    r = torch.randn(shape, generator=gen, dtype=torch.float32)
    return r / r.square().mean().sqrt().clamp(min=1e-12)


def prepare_input(dev: torch.device, v: Any) -> Any:
    """Inputs on the device; float ones as fresh leaves requiring grad, so gradients reach the input."""
    if not isinstance(v, torch.Tensor):
        return v
    v = v.detach().to(dev)
    return v.clone().requires_grad_(True) if v.is_floating_point() else v


def _inputs(graph: ModelGraph, program: Program, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
    from .propagate import _input_tensors

    return _input_tensors(graph, ExampleInputs(tuple(args), dict(kwargs)))


_ALIASES = frozenset({"view", "reshape", "unsafe_view", "transpose", "permute", "contiguous", "unsqueeze", "squeeze",
                      "flatten", "unflatten", "clone", "alias", "t", "view_as", "reshape_as", "movedim", "swapaxes"})


def aliases(graph: ModelGraph) -> dict[str, str]:
    """Reshapes of a tensor nothing else reads: the same elements forward, the same gradient backward, so
    their statistics are their producer's and need no probe of their own (a third of a transformer's ops)."""
    out = {}
    for op in graph:
        if op.kind is OpKind.PASSTHROUGH and len(op.inputs) == 1 and base_name(op.target) in _ALIASES:
            if graph.dag.out_degree(op.inputs[0]) == 1 and graph.op(op.inputs[0]).kind is not OpKind.PARAM:
                out[op.name] = op.inputs[0]
    return out


class Slot:
    """The probe the instrumented graph calls; it forwards to the recorder of the pass under way."""

    __name__ = "initlint_probe"  # what torch.fx names the inserted nodes after

    def __init__(self):
        self.recorder: Recorder | None = None

    def __call__(self, value: Any, idx: int) -> None:
        if self.recorder is not None:
            self.recorder.probe(value, idx)


def _instrumented(program: Program, graph: ModelGraph) -> tuple[torch.fx.GraphModule, Slot]:
    """The program with a probe after every node that is an op, built once per program and graph (code
    generation costs more than a small model's step) and kept in the program's cache."""
    key = ("instrumented", tuple(graph.ops))
    if key not in program.cache:
        slot = Slot()
        program.cache[key] = (_instrument(unlifted(program), graph, slot, program.prefix), slot)
    return program.cache[key]


def unlifted(program: Program) -> torch.fx.GraphModule | None:
    """``program.module()``, made once per program and kept in its cache: unlifting an exported program costs a
    hundred times a small model's step. Callers build new modules over it, never edit it."""
    if "module" not in program.cache:
        program.cache["module"] = program.module()
    return program.cache["module"]


def _instrument(gm: torch.fx.GraphModule, graph: ModelGraph, slot: Slot, prefix: str) -> torch.fx.GraphModule:
    """A copy of ``gm`` (sharing its modules and parameters) with ``slot(value, op index)`` after every node
    that is an op; the index is the op's position in ``graph``."""
    index = {name: i for i, name in enumerate(graph.ops)}
    skip = aliases(graph)
    g = copy.deepcopy(gm.graph)
    params = {op.weight.name: op.name for op in graph.of_kind(OpKind.PARAM) if op.weight is not None}
    for node in list(g.nodes):
        if node.op == "get_attr":
            target = str(node.target)
            name = params.get(target) or params.get(target[len(prefix):] if target.startswith(prefix) else "")
        elif node.op in ("call_function", "call_method", "call_module"):
            name = node.name if node.name in index and node.name not in skip else None
        else:
            name = None
        if name is None:
            continue
        with g.inserting_after(node):
            g.call_function(slot, (node, index[name]))
    return torch.fx.GraphModule(gm, g, type(gm).__name__)


def hooks_forward(model: nn.Module, graph: ModelGraph, rec: Recorder, *args, **kwargs):
    """The model run with forward hooks on the leaves, naming calls as the hooks capture did."""
    from .capture.hooks import _flat as capture_flat
    from .capture.normalize import is_known_leaf

    taken: set[str] = set()
    producer: dict[int, weakref.ref] = {}

    def add(name: str) -> str:
        base, i = name, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    for i, t in enumerate(capture_flat(list(args)) + capture_flat(list(kwargs.values()))):
        add(f"input_{i}")
        producer[id(t)] = weakref.ref(t)
    paths = {m: p for p, m in model.named_modules()}
    leaves = [m for m in model.modules() if not list(m.children()) or is_known_leaf(m)]
    count = [0]

    def known(t) -> bool:
        ref = producer.get(id(t))
        return ref is not None and ref() is t

    def hook(module, hargs, output):
        for t in capture_flat(hargs):
            if not known(t):
                count[0] += 1
                name = add(f"functional_{count[0]}")
                producer[id(t)] = weakref.ref(t)
                if name in rec.index:
                    rec.probe(t, rec.index[name])
        name = add(paths.get(module, "").replace(".", "_") or "root")
        if name in rec.index:
            rec.probe(output, rec.index[name])
        for t in capture_flat(output):
            producer[id(t)] = weakref.ref(t)

    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        return model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()


def device_of(model: nn.Module) -> torch.device:
    """Where the model's first tensor not on ``meta`` lives (CPU for none), without listing them all."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if not t.is_meta:
            return t.device
    return torch.device("cpu")


def first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            t = first_tensor(v)
            if t is not None:
                return t
    return None


def _flat(value: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)] if not hasattr(value, "to_tuple") \
        else [t for t in pytree.tree_leaves(value.to_tuple()) if isinstance(t, torch.Tensor)]


@contextlib.contextmanager
def quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


__all__ = ["measure", "resolve_device", "Recorder", "DEVICES"]
