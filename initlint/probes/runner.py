"""The shared pass: one forward and one backward pass of the captured graph that records what the findings'
probes asked for, and nothing else.

It follows the measurement pass's conventions (:mod:`initlint.measure`): training mode, the loss
``L = sum_i <y_i, r_i>`` with ``r_i ~ N(0, 1)`` seeded from ``LOSS_SEED + seed`` (scaled to a mean square
of 1), gradients by
``torch.autograd.grad`` (no ``.grad`` written), and everything else restored by
:func:`initlint.state.preserved`. Only the ops some probe reads are instrumented, so the pass costs about one
training step.

A :class:`Runnable` is the captured graph bound to a model: the user's, or a repaired deep copy (the same
graph with the copy's parameters, and the repairs' structural edits inserted). Inputs are cut to
``max_batch`` samples and ``max_spatial`` positions per spatial dimension when the capture allows it.

>>> import torch
>>> from torch import nn
>>> from initlint.capture import capture_program
>>> from initlint.load import from_instance
>>> from initlint.probes.records import Needs
>>> _ = torch.manual_seed(0)
>>> target = from_instance(nn.Sequential(nn.Linear(256, 256), nn.ReLU()), torch.randn(64, 256))
>>> graph, program = capture_program(target)
>>> ev = run_pass(Runnable.of(program, graph), Needs.of(ops=["_1"]), torch.device("cpu"))
>>> round(ev.signals["_1"].forward.second, 2), sorted(ev.signals)
(0.17, ['_1'])
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch
from torch import nn
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx import _pytree as fx_pytree
from torch.fx import traceback as fx_traceback
from torch.fx.graph_module import _copy_attr
from torch.fx.node import map_arg
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode, _pop_mode_temporarily

from ..capture.fx import CONSTANT
from ..capture.program import Program
from ..graph import ModelGraph
from ..inputs import ExampleInputs
from ..measure import (
    LOSS_SEED, Recorder, Slot, _moments, device_of, first_tensor, gradient_leaves, loss_targets, prepare_input, quiet,
    seed_device, surrogate_loss, unlifted,
)
from ..ops import Capture, OpKind
from ..state import preserved
from .records import Edit, Evidence, Needs, ScaleAfter, SetArgument, Tap

# The probe's input caps: a probe never needs more than a forward and backward pass at this size. 32 samples
# and 64 positions per spatial dimension keep second moments within a few percent (thousands of elements per
# channel) while bounding the cost on large example inputs.
MAX_BATCH = 32
MAX_SPATIAL = 64
# What a "keep" tap retains of a tensor: enough elements for correlations and ranks within about 1%.
KEEP = 1 << 16
# Passes of a program's graph run by the interpreter before its instrumented code is generated: an interpreted
# pass costs 1-3 us more an op, the code generation 50-100 us an op: it pays after some 25-50 passes. A stage is
# usually two to six passes (the autocast passes count); IL206's extra mask draws run up to 32.
COMPILE_AFTER = 16
_FX = object()  # Runnable.captured of an fx capture: the program's GraphModule, made on first use


@dataclass(frozen=True)
class Runnable:
    """The captured graph bound to a model, ready to run with taps.

    fx: the traced graph over the model's modules. export: the exported program's graph as exported, with the
    parameters, buffers and constants it lifted passed in as arguments (taken from ``model`` by name, so a
    repaired copy runs on its own tensors), never unlifted: ``ExportedProgram.module()`` costs a hundred times
    a small model's step. hooks: the model itself."""

    capture: Capture
    graph: ModelGraph = dataclasses.field(repr=False)  # names the ops
    model: nn.Module  # the model whose parameters the graph uses
    # the graph module as captured (export: lifted); None for hooks: the model runs; fx: _FX, the program's
    # GraphModule made on first use of :attr:`module` (an interpreted pass runs the traced graph over the model)
    captured: Any
    inputs: ExampleInputs  # what the graph module (or the model) is called with
    values: tuple = ()  # fx: the placeholders' values
    prefix: str = ""
    edits: tuple = ()  # the structural edits to make, for probes that must know them (a changed call argument)
    program: Program | None = dataclasses.field(default=None, repr=False, compare=False)
    # the module with a probe after every op, built on first use and shared by copies with other inputs
    cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, program: Program, graph: ModelGraph, model: nn.Module | None = None,
           edits: Sequence[Edit] = ()) -> "Runnable":
        """The program's graph bound to ``model`` (default: the program's own), with ``edits`` inserted. The
        program's own is built once per program and graph, and kept in the program's cache. Nothing is compiled
        here: :meth:`instrumented` builds what a pass runs, once."""
        if (model is None or model is program.model) and not edits:
            key = ("probe-runnable", tuple(graph.ops))
            if key not in program.cache:
                program.cache[key] = cls._of(program, graph, program.model, ())
            return program.cache[key]
        return cls._of(program, graph, program.model if model is None else model, edits)

    @classmethod
    def _of(cls, program: Program, graph: ModelGraph, model: nn.Module, edits: Sequence[Edit]) -> "Runnable":
        if program.capture is Capture.HOOKS:
            if edits:
                raise ValueError("structural edits need a captured graph")
            return cls(program.capture, graph, model, None, program.inputs, program=program)
        if program.capture is Capture.FX:
            module = _FX
        elif _liftable(program):
            module = program.exported.graph_module
        else:  # lifted state this runner does not pass (opaque objects, effect tokens): the unlifted module
            module = unlifted(program)
        return cls(program.capture, graph, model, module, program.inputs, tuple(program.values), program.prefix,
                   tuple(edits), program)

    @property
    def module(self) -> torch.fx.GraphModule | None:
        """The graph module as captured (export: lifted), None for hooks; fx: the program's ``GraphModule``."""
        return self.program.graph_module if self.captured is _FX else self.captured

    @property
    def captured_graph(self) -> torch.fx.Graph:
        """The captured graph (fx: the traced graph, the program's ``GraphModule``'s own, without making it)."""
        return self.program.fx_graph if self.captured is _FX else self.module.graph

    @property
    def lifted(self) -> bool:
        """Whether the module is an exported program's graph that takes its state as arguments."""
        return self.capture is Capture.EXPORT and self.program is not None \
            and self.module is self.program.exported.graph_module

    @property
    def own(self) -> bool:
        return self.program is not None and self.model is self.program.model and not self.edits

    def with_inputs(self, inputs: ExampleInputs, values: tuple) -> "Runnable":
        return dataclasses.replace(self, inputs=inputs, values=values)

    def instrumented(self) -> tuple[torch.fx.GraphModule, Slot]:
        """The module with ``slot(value, op index)`` after every op (after its edit, where a repair rescaled it),
        built once: a pass points the slot at its recorder, which skips the ops no probe reads. Code
        generation costs more than a small model's step, so it is done once per program, and once more only for
        a copy with structural edits: a copy without them runs the program's own generated code (fx: over the
        copy's modules; export: on the copy's tensors, passed as arguments)."""
        if "instrumented" not in self.cache:
            if self.own or self.program is None or (self.edits and self.scales() is None):
                self.cache["instrumented"] = _instrument_edited(self)
            else:
                gm, slot = Runnable.of(self.program, self.graph).instrumented()
                if self.capture is Capture.FX or not self.lifted:
                    gm = _rebound(gm, self.model if self.capture is Capture.FX else gm, self)
                self.cache["instrumented"] = (gm, slot)
        return self.cache["instrumented"]

    def interpretable(self) -> bool:
        """Whether this pass may run the graph through :class:`_Interpreted` rather than generated code: until
        the program's graph has run ``COMPILE_AFTER`` interpreted passes (an interpreted pass costs a few
        microseconds an op more; generating the instrumented code, tens), and where the program's own code would
        serve (no edit other than a scale the slots apply)."""
        if self.program is None or "instrumented" in self.cache or not (self.capture is Capture.FX or self.lifted):
            return False
        if self.edits and self.scales() is None:
            return False
        own = self.program.cache.get(("probe-runnable", tuple(self.graph.ops)))
        if own is not None and "instrumented" in own.cache:
            return False
        return self.program.cache.get("probe-interpreted", 0) < COMPILE_AFTER

    def root(self) -> nn.Module:
        """What an interpreted pass runs the graph over: fx, the model itself (the graph's targets are paths in
        it: neither the program's ``GraphModule`` nor a copy of it over a repaired model's modules is made);
        export, the lifted graph module."""
        return self.model if self.capture is Capture.FX else self.plain()

    def interpreter(self, module: nn.Module) -> tuple["_Interpreted", "_Slot"]:
        """An interpreter of this runnable's graph over ``module`` (:meth:`root`, or a copy of it on the device),
        with this runnable's slot. Made once per root and kept (a pass on a device copy brings a new one):
        setting one up walks the graph for its values' last uses and lists the submodules, a tenth of a small
        model's step."""
        self.program.cache["probe-interpreted"] = self.program.cache.get("probe-interpreted", 0) + 1
        slot = self.cache.setdefault("slot", _Slot())
        kept = self.cache.get("interpreter")
        if kept is not None and kept.module is module:
            return kept, slot
        key = ("probe-slots", tuple(self.graph.ops))
        if key not in self.program.cache:
            signature = self.program.exported.graph_signature if self.lifted else None
            self.program.cache[key] = {n: i for n, (_, i) in
                                       _slot_targets(self.captured_graph, self.graph, self.prefix, signature).items()}
        interpreted = _Interpreted(module, self.program.cache[key], slot, self.captured_graph)
        if module is self.root():  # not a copy moved to the device for this pass alone
            self.cache["interpreter"] = interpreted
        return interpreted, slot

    def plain(self) -> torch.fx.GraphModule:
        """The graph as captured over this runnable's model, uninstrumented and unedited (fx: rebound to a copy's
        modules; export: the lifted graph, which takes the state as arguments)."""
        if self.capture is Capture.FX and not (self.model is self.program.model):
            if "plain" not in self.cache:
                self.cache["plain"] = _rebound(self.module, self.model, self)
            return self.cache["plain"]
        return self.module

    def scales(self) -> dict[int, tuple[float, ...]] | None:
        """The edits as the program's instrumented code applies them at run time, op index -> factors in order,
        when every edit is a :class:`ScaleAfter` on an op that code reads (None otherwise: the edits are
        inserted into a copy of the graph)."""
        if "scales" not in self.cache:
            out: dict[int, tuple[float, ...]] | None = {}
            if self.edits:
                slotted: set[str] = set()
                if self.program is not None and self.captured is not None:
                    signature = self.program.exported.graph_signature if self.lifted else None
                    slotted = {name for name, _ in
                               _slot_targets(self.captured_graph, self.graph, self.prefix, signature).values()}
                index = {name: i for i, name in enumerate(self.graph.ops)}
                for edit in self.edits:
                    if not isinstance(edit, ScaleAfter) or edit.op not in slotted:
                        out = None
                        break
                    out[index[edit.op]] = out.get(index[edit.op], ()) + (float(edit.factor),)
            self.cache["scales"] = out
        return self.cache["scales"]

    def call_args(self) -> tuple[tuple, dict]:
        if self.capture is Capture.FX:
            return tuple(self.values), {}
        return tuple(self.inputs.args), dict(self.inputs.kwargs)

    def flat_args(self, module_args: tuple, kwargs: dict, model: nn.Module | None = None) -> list:
        """A lifted graph's arguments: its parameters, buffers and constants from ``model`` (default: this
        runnable's) by name where the shape matches, else as exported, and the user inputs flattened."""
        ep = self.program.exported
        if "state" not in self.cache:
            self.cache["state"] = {**dict(ep.state_dict), **dict(getattr(ep, "constants", {}) or {})}
        state = self.cache["state"]
        model = self.model if model is None else model
        mine = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        user = iter(fx_pytree.tree_flatten_spec((tuple(module_args), dict(kwargs)), ep.call_spec.in_spec))
        out = []
        for spec in ep.graph_signature.input_specs:
            if spec.kind is InputKind.USER_INPUT:
                out.append(next(user))
                continue
            target = spec.target
            name = target[len(self.prefix):] if self.prefix and target.startswith(self.prefix) else target
            saved = state.get(target)
            t = mine.get(name)
            out.append(t if t is not None and (saved is None or t.shape == saved.shape) else saved)
        return out

    def user_outputs(self, flat) -> list:
        """A lifted graph's user outputs (the buffer mutations it also returns dropped)."""
        specs = self.program.exported.graph_signature.output_specs
        flat = flat if isinstance(flat, (tuple, list)) else (flat,)
        return [v for s, v in zip(specs, flat) if s.kind is OutputKind.USER_OUTPUT]

    def __call__(self, *args, **kwargs):
        """One plain forward of the graph (of the model, for hooks), uninstrumented; edits are not applied."""
        if self.module is None:
            return self.model(*args, **kwargs)
        if self.lifted:
            out = self.module(*self.flat_args(args, kwargs))
            return pytree.tree_unflatten(self.user_outputs(out), self.program.exported.call_spec.out_spec)
        if self.capture is Capture.FX and not self.own:
            return _rebound(self.module, self.model, self)(*args, **kwargs)
        return self.module(*args, **kwargs)


_LIFTABLE = frozenset({InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR, InputKind.USER_INPUT})


def _liftable(program: Program) -> bool:
    ep = program.exported
    return ep is not None and all(s.kind in _LIFTABLE for s in ep.graph_signature.input_specs) \
        and not any(n.op == "get_attr" for n in ep.graph_module.graph.nodes)


def _rebound(gm: torch.fx.GraphModule, root: nn.Module, runnable: "Runnable") -> torch.fx.GraphModule:
    """``gm``'s generated code over ``root``'s modules and attributes (what ``GraphModule(root, gm.graph)`` makes,
    without generating the code again): a copy of the model runs the program's own instrumented module. For an
    unlifted exported module (``root`` is ``gm``), the copy's parameters and buffers are rebound by name."""
    new = object.__new__(type(gm))  # the same class, so the same generated forward (GraphModule.__new__ subclasses)
    new.__dict__.update(gm.__dict__)
    new._modules, new._parameters, new._buffers = {}, {}, {}
    for node in gm.graph.nodes:
        if node.op in ("get_attr", "call_module"):  # a constant torch.fx stowed is not on the model: gm holds it
            _copy_attr(gm if CONSTANT in node.meta else root, new, str(node.target))
    if root is gm:
        _rebind(new, runnable.model, runnable.prefix)
    return new


def _rebind(module: nn.Module, model: nn.Module, prefix: str) -> None:
    """Point an exported program's unlifted module at ``model``'s parameters and buffers (a repaired copy's).
    The module's submodules are replaced by fresh containers on the way, so the program's own stays as it was."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name, t in tensors.items():
        path, _, leaf = (prefix + name).rpartition(".")
        try:
            owner = module.get_submodule(path) if path else module
        except AttributeError:
            continue
        slot = owner._parameters if leaf in owner._parameters else owner._buffers if leaf in owner._buffers else None
        if slot is not None and slot[leaf] is not None and slot[leaf].shape == t.shape:
            slot[leaf] = t


def _apply_edits(g: torch.fx.Graph, edits: Sequence[Edit]) -> dict[str, torch.fx.Node]:
    nodes = {n.name: n for n in g.nodes}
    edited: dict[str, torch.fx.Node] = {}
    for edit in edits:
        node = nodes.get(edit.op)
        if node is None:
            raise ValueError(f"op `{edit.op}` is not in the captured graph")
        if isinstance(edit, ScaleAfter):
            last = edited.get(edit.op, node)
            users = [u for u in last.users]
            with g.inserting_after(last):
                scaled = g.call_function(operator.mul, (last, float(edit.factor)))
            for u in users:
                u.replace_input_with(last, scaled)
            edited[edit.op] = scaled
        elif isinstance(edit, SetArgument):
            if edit.position is not None and edit.position < len(node.args):
                node.args = (*node.args[:edit.position], edit.value, *node.args[edit.position + 1:])
            else:
                node.kwargs = {**node.kwargs, edit.name: edit.value}
    g.lint()
    return edited


def edited_module(runnable: "Runnable") -> torch.fx.GraphModule:
    """The runnable's module with its edits, uninstrumented (for :func:`initlint.probe.fix`)."""
    base = runnable.module
    with quiet():
        g = copy.deepcopy(base.graph)
    _apply_edits(g, runnable.edits)
    return torch.fx.GraphModule(runnable.model if runnable.capture is Capture.FX else base, g, type(base).__name__)


def _instrument_edited(runnable: "Runnable") -> tuple[torch.fx.GraphModule, Slot]:
    """One copy of the graph, the edits inserted and a slot after every op, one code generation."""
    slot = _Slot()
    base = runnable.module
    with quiet():  # copying an exported graph's input spec warns about its pytree classes
        g = copy.deepcopy(base.graph)
    edited = _apply_edits(g, runnable.edits) if runnable.edits else {}
    slot.ops = _insert_slots(g, runnable.graph, slot, runnable.prefix, edited,
                             runnable.program.exported.graph_signature if runnable.lifted else None, rewire=True)
    root = runnable.model if runnable.capture is Capture.FX else base
    gm = torch.fx.GraphModule(root, g, type(base).__name__)
    if runnable.capture is Capture.EXPORT and not runnable.lifted and runnable.model is not runnable.program.model:
        _rebind(gm, runnable.model, runnable.prefix)  # GraphModule made fresh containers: the program's own stays
    return gm, slot


# -- inputs ------------------------------------------------------------------------------------------------


def capped(runnable: Runnable, max_batch: int = MAX_BATCH, max_spatial: int = MAX_SPATIAL) -> Runnable:
    """``runnable`` with its inputs cut to the caps (fx and hooks captures: an exported graph has its shapes
    fixed). The batch is the leading dimension every tensor input shares; spatial dimensions are those after
    the channels of inputs with four or more dimensions."""
    if runnable.capture is Capture.EXPORT:
        return runnable
    tensors = [t for t in pytree.tree_leaves((runnable.inputs.args, dict(runnable.inputs.kwargs)))
               if isinstance(t, torch.Tensor)]
    if not tensors or any(t.dim() == 0 for t in tensors):
        return runnable
    batch = {t.shape[0] for t in tensors}
    if len(batch) != 1 or (batch.pop() <= max_batch and all(d <= max_spatial for t in tensors if t.dim() >= 4
                                                             for d in t.shape[2:])):
        return runnable

    def cut(v: Any) -> Any:
        if not isinstance(v, torch.Tensor) or v.dim() == 0:
            return v
        v = v[:max_batch]
        if v.dim() >= 4:
            v = v[(slice(None), slice(None), *(slice(0, max_spatial) for _ in v.shape[2:]))]
        return v

    args, kwargs = pytree.tree_map(cut, (tuple(runnable.inputs.args), dict(runnable.inputs.kwargs)))
    values = tuple(pytree.tree_map(cut, list(runnable.values)))
    return runnable.with_inputs(ExampleInputs(args, kwargs, runnable.inputs.source), values)


def keep(t: torch.Tensor) -> torch.Tensor:
    """A "keep" reduction: the first ``KEEP`` elements of the first sample, in float32, on the CPU."""
    return t.detach()[:1].reshape(-1)[:KEEP].float().cpu() if t.dim() else t.detach().float().cpu()


def keep_all(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (up to ``KEEP`` elements per sample, capped samples), for per-row statistics."""
    t = t.detach()
    return t.float().cpu() if t.numel() <= 8 * KEEP else t[: max(1, 8 * KEEP // max(t[0].numel(), 1))].float().cpu()


# -- the pass ----------------------------------------------------------------------------------------------


class _Recorder(Recorder):
    """The measurement pass's recorder, restricted to the ops asked for, with taps beside the moments."""

    def __init__(self, graph: ModelGraph, needs: Needs | None):
        super().__init__(graph)
        self.wanted = None if needs is None else {self.index[o] for o in needs.read if o in self.index}
        self.fwd_taps: dict[int, list[Tap]] = {}
        self.bwd_taps: dict[int, list[Tap]] = {}
        for tap in needs.taps if needs is not None else ():
            if tap.op in self.index:
                (self.bwd_taps if tap.backward else self.fwd_taps).setdefault(self.index[tap.op], []).append(tap)
        self.values: dict[tuple[str, str], Any] = {}
        self.seen: set[int] = set()
        self.slots: list[Slot] = []  # the instrumented modules' slots pointing here, let go by close()
        self.pending: set[int] | None = None  # a forward-only pass ends once it has read these ops
        self.emulated: LowPrecisionProducts | None = None  # the pass's dispatch mode, left out of the reductions

    @property
    def instrumented(self) -> set[int] | None:
        if self.wanted is None:
            return None
        return self.wanted | set(self.fwd_taps) | set(self.bwd_taps)

    def probe(self, value: Any, idx: int) -> None:
        if self.wanted is None or idx in self.wanted:
            super().probe(value, idx)
        elif idx not in self.fwd_taps and idx not in self.bwd_taps:
            return
        if idx in self.seen:
            return
        self.seen.add(idx)
        t = first_tensor(value)
        if t is None:
            return
        for tap in self.fwd_taps.get(idx, ()):
            if (tap.op, tap.key) not in self.values:  # several findings may ask for the same reduction
                self.values[(tap.op, tap.key)] = self._reduce(tap, t)
        if self.pending is not None:
            self.pending.discard(idx)
            if not self.pending:
                raise _Enough
        if t.requires_grad and idx in self.bwd_taps:
            self.hooked.add(-1 - idx)
            handle = t.register_hook(functools.partial(self._grad_taps, idx))
            if t.grad_fn is None:
                self.handles.append(handle)

    def _reduce(self, tap: Tap, t: torch.Tensor) -> Any:
        """A tap's reduction, outside the pass's :class:`LowPrecisionProducts` (it reads the value the op made;
        through the mode each of its ops would cost a Python dispatch, ten times the op on a small tensor)."""
        if self.emulated is not None and _get_current_dispatch_mode() is self.emulated:
            with _pop_mode_temporarily():
                return tap.reduce(t.detach())
        return tap.reduce(t.detach())

    def close(self) -> None:
        super().close()
        for slot in self.slots:
            slot.recorder = None
            if isinstance(slot, _Slot):
                slot.scales = {}
        self.slots.clear()

    def _grad_taps(self, idx: int, g: torch.Tensor) -> None:
        self.fired.add(-1 - idx)
        for tap in self.bwd_taps.get(idx, ()):
            self.values.setdefault((tap.op, tap.key), tap.reduce(g.detach()))


_PRODUCTS = frozenset(
    getattr(torch.ops.aten, name).default for name in ("convolution", "mm", "addmm", "bmm", "baddbmm", "addbmm"))


class LowPrecisionProducts(TorchDispatchMode):
    """Matrix products and convolutions of float16 (bfloat16) operands computed in float32 and rounded to float16
    (bfloat16), under an autocast pass on the CPU.

    The CPU's own half-precision kernels compute exactly this (operands widened to float32, float32
    accumulation, the result rounded) but without vector units for it, 10-20x slower than float32: a 1x1
    convolution of 64 channels at 32 x 32 takes 400 ms under float16 autocast against 20 ms in float32. The
    result is the same tensor, to the order of the float32 accumulation: what overflows to inf in float16 still
    does, what falls below its normal range still does. Every other op runs as autocast leaves it."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PRODUCTS and any(isinstance(a, torch.Tensor) and a.dtype == self.dtype for a in args):
            wide = [a.float() if isinstance(a, torch.Tensor) and a.dtype == self.dtype else a for a in args]
            return func(*wide, **kwargs).to(self.dtype)
        return func(*args, **kwargs)


class _Enough(BaseException):
    """Raised by a forward-only pass's recorder once it has read every op it reads: the rest of the forward is not
    run. A BaseException, so that a model's own ``except Exception`` does not take it for a failure of its code."""


def run_pass(runnable: Runnable, needs: Needs | None, device: torch.device, seed: int = 0,
             autocast: torch.dtype | None = None) -> Evidence:
    """One forward and backward pass of ``runnable`` recording ``needs`` (every op when ``needs`` is None); a
    forward pass only, as far as the last op it reads, when nothing in ``needs`` reads a gradient (forward taps and
    ``forward_ops`` only).

    With ``autocast`` (float16 or bfloat16), a forward pass only, under ``torch.autocast`` in that dtype, and only
    as far as the last op it taps. On the CPU its matrix products and convolutions are computed as
    :class:`LowPrecisionProducts` says: the same values (low-precision operands, float32 accumulation, a
    low-precision result) at float32 speed.

    Taps that ask for ``autocast`` themselves are read in one more forward pass per dtype (their values in the
    evidence's taps beside the others'; none where that pass fails)."""
    if autocast is None and needs is not None and any(t.autocast is not None for t in needs.taps):
        cast = [t for t in needs.taps if t.autocast is not None]
        plain = dataclasses.replace(needs, taps=tuple(t for t in needs.taps if t.autocast is None))
        evidence = run_pass(runnable, plain, device, seed)
        taps = dict(evidence.taps)
        for dtype in dict.fromkeys(t.autocast for t in cast):
            try:
                taps.update(run_pass(runnable, Needs(taps=tuple(t for t in cast if t.autocast == dtype)), device,
                                     seed, autocast=dtype).taps)
            except Exception:  # noqa: BLE001 - the probes that asked find their taps missing
                continue
        return dataclasses.replace(evidence, taps=taps)
    graph = runnable.graph
    rec = _Recorder(graph, needs)
    if needs is not None and needs.empty:
        return Evidence()
    # no gradient read (the autocast pass, extra passes that read values, probes that read forward moments): no
    # backward, and the forward stops at the last op read
    forward_only = autocast is not None or (needs is not None and not needs.gradients)
    grad = torch.no_grad() if forward_only else torch.enable_grad()
    cast = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    emulate = LowPrecisionProducts(autocast) if autocast is not None and device.type == "cpu" \
        else contextlib.nullcontext()
    if isinstance(emulate, LowPrecisionProducts):
        rec.emulated = emulate
    if forward_only and needs is not None:
        rec.pending = set(rec.wanted) | set(rec.fwd_taps)
    with preserved(runnable.model), grad, cast, emulate, quiet():
        seed_device(device, seed)
        try:
            grads = _run(runnable, graph, rec, device, seed, needs.params if needs is not None else frozenset(),
                         backward=not forward_only)
        except _Enough:
            grads = {}
        finally:
            rec.close()
    return Evidence(rec.signals(), dict(rec.values), grads)


def _run(runnable: Runnable, graph: ModelGraph, rec: _Recorder, dev: torch.device, seed: int,
         params: frozenset[str], backward: bool = True) -> dict[str, float]:
    from ..measure import hooks_forward

    model = runnable.model
    here = runnable.cache.get("device")  # the model does not move during the stage
    if here is None:
        here = runnable.cache["device"] = device_of(model)
    moved = dev != here
    args, kwargs = runnable.call_args()
    if not kwargs and all(type(a) is torch.Tensor for a in args):  # what tree_map makes of them, without it
        args, kwargs = tuple(prepare_input(dev, a) for a in args), {}
    else:
        args, kwargs = pytree.tree_map(functools.partial(prepare_input, dev), (args, kwargs))
    inputs = _match_inputs(graph, args, kwargs)
    if runnable.captured is None:  # hooks (asking for .module would make an fx program's GraphModule)
        target = copy.deepcopy(model).to(dev) if moved else model
        target.train()
        runner = functools.partial(hooks_forward, target, graph, rec)
        named = dict(target.named_parameters()) if params else {}
    else:
        if runnable.capture is Capture.FX:
            model.train()
        if runnable.interpretable():
            root = runnable.root()
            module, slot = runnable.interpreter(copy.deepcopy(root).to(dev) if moved and not runnable.lifted
                                                else root)
            call = module.run
            if runnable.capture is Capture.FX and module.module is not model:
                module.module.train()
        else:
            module, slot = runnable.instrumented()
            if runnable.capture is Capture.FX:
                module.train()
            if moved and not runnable.lifted:
                module = copy.deepcopy(module).to(dev)
            call = module
        slot.recorder = rec
        rec.slots.append(slot)
        if isinstance(slot, _Slot):
            slot.scales = runnable.scales() or {}
        if runnable.lifted:  # the state goes in as arguments: the model's (on the device), in the graph's order
            state = copy.deepcopy(model).to(dev) if moved else model
            flat = [t.to(dev) if isinstance(t, torch.Tensor) and t.device != dev else t
                    for t in runnable.flat_args(args, kwargs, state)]
            target = state
            runner = lambda *a, **k: runnable.user_outputs(call(*flat))  # noqa: E731
            named = dict(state.named_parameters()) if params else {}
        else:
            target = module.module if isinstance(module, _Interpreted) else module
            runner = call
            named = {(n[len(runnable.prefix):] if n.startswith(runnable.prefix) else n): p
                     for n, p in target.named_parameters()} if params else {}
    for name, t in inputs.items():
        rec.probe(t, rec.index[name])
    out = runner(*args, **kwargs)
    if not backward:
        return {}
    outs = [t for t in pytree.tree_leaves(out.to_tuple() if hasattr(out, "to_tuple") else out)
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]
    leaves = gradient_leaves(inputs.values(), target)
    if not outs or not leaves:
        return {}
    loss = _surrogate_loss(runnable, outs, seed)
    del out, outs
    # Without parameter gradient norms to read, the backward runs to the float inputs only: the gradients at the
    # ops are the same, and the weights' gradients (half a linear layer's backward) are not computed. Where an
    # op's hook got no gradient that way (its only path goes to parameters), the rest of the backward runs to
    # every leaf, as before; straight away where the graph shows that an op with a hook has no float input
    # upstream (an embedding's output): its gradient can only come that way.
    own = [t for t in inputs.values() if t.requires_grad]
    if params or not own or len(own) == len(leaves) or _unreached(runnable, graph, rec, inputs):
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    else:
        grads = torch.autograd.grad(loss, own, allow_unused=True, retain_graph=True)
        if rec.hooked - rec.fired:
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        else:
            leaves = own
        del loss
    index = {id(t): g for t, g in zip(leaves, grads)}
    norms = {}
    for name in params:
        p = named.get(name)
        g = index.get(id(p)) if p is not None else None
        if g is not None:
            norms[name] = float(torch.linalg.vector_norm(g.detach().double()))
    return norms


# Outputs up to this many elements in all keep their loss targets for the program's next pass (the repaired
# copy's has the same outputs): drawing them is a tenth of a small model's step.
LOSS_CACHE = 1 << 16


def _surrogate_loss(runnable: Runnable, outs: list[torch.Tensor], seed: int) -> torch.Tensor:
    """:func:`initlint.measure.surrogate_loss`, the targets drawn once per program, seed and output shapes."""
    if sum(o.numel() for o in outs) > LOSS_CACHE:
        return surrogate_loss(outs, seed)
    cache = runnable.program.cache if runnable.program is not None else runnable.cache
    key = ("probe-loss", seed, tuple((tuple(o.shape), o.dtype, o.device) for o in outs))
    targets = cache.get(key)
    if targets is None:
        gen = torch.Generator().manual_seed(LOSS_SEED + seed)
        targets = cache[key] = tuple(loss_targets(o.shape, gen).to(o.device, o.dtype) for o in outs)
    return sum((o * r).sum() for o, r in zip(outs, targets))


def _unreached(runnable: Runnable, graph: ModelGraph, rec: _Recorder, inputs: dict[str, torch.Tensor]) -> bool:
    """Whether an op whose gradient a hook waits for has none of the float inputs upstream in the graph: a
    backward to those inputs alone cannot reach it."""
    own = tuple(sorted(n for n, t in inputs.items() if t.requires_grad))
    cache = runnable.program.cache if runnable.program is not None else runnable.cache
    key = ("probe-reached", tuple(graph.ops), own)
    reached = cache.get(key)
    if reached is None:
        names = set(own).union(*(nx.descendants(graph.dag, n) for n in own if n in graph.dag))
        reached = cache[key] = frozenset(rec.index[n] for n in names if n in rec.index)
    return any((i if i >= 0 else -1 - i) not in reached for i in rec.hooked)


def instrument(gm: torch.fx.GraphModule, graph: ModelGraph, slot: Any, prefix: str,
               edited: dict | None = None, signature=None) -> torch.fx.GraphModule:
    """A copy of ``gm`` (sharing its modules and parameters) with ``slot(value, op index)`` after every op, the
    index being the op's position in ``graph``; an op that a structural edit rescaled is read after the edit.
    ``signature``: an exported program's, when ``gm`` is its lifted graph (parameters are placeholders)."""
    with quiet():
        g = copy.deepcopy(gm.graph)
    by_name = {n.name: n for n in g.nodes}
    moved = {op: by_name[node.name] for op, node in (edited or {}).items() if node.name in by_name}
    _insert_slots(g, graph, slot, prefix, moved, signature)
    return torch.fx.GraphModule(gm, g, type(gm).__name__)


class _Slot(Slot):
    """The probe runner's slot: it records, and returns the value its op's users then read, first multiplied by
    the factors of the pass's :class:`ScaleAfter` edits (so a copy with such edits runs the program's own code)."""

    def __init__(self):
        super().__init__()
        self.scales: dict[int, tuple[float, ...]] = {}
        self.ops: set[str] = set()  # the ops it reads

    def __call__(self, value: Any, idx: int) -> Any:
        for factor in self.scales.get(idx, ()):
            value = operator.mul(value, factor)
        if self.recorder is not None:
            self.recorder.probe(value, idx)
        return value


def _slot_targets(g: torch.fx.Graph, graph: ModelGraph, prefix: str, signature=None) -> dict[str, tuple[str, int]]:
    """The nodes of ``g`` that are ops of ``graph``, node name -> (op name, op index): calls by their names, and
    parameters by their targets (``get_attr`` nodes; an exported program's lifted placeholders)."""
    index = {name: i for i, name in enumerate(graph.ops)}
    params = {op.weight.name: op.name for op in graph.of_kind(OpKind.PARAM) if op.weight is not None}
    lifted = {} if signature is None else {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
                                            **getattr(signature, "inputs_to_lifted_tensor_constants", {})}

    def param(target: str) -> str | None:
        return params.get(target) or params.get(target[len(prefix):] if target.startswith(prefix) else "")

    out: dict[str, tuple[str, int]] = {}
    for node in g.nodes:
        if node.op == "get_attr":
            name = param(str(node.target))
        elif node.op == "placeholder":
            name = param(lifted[node.name]) if node.name in lifted else None
        elif node.op in ("call_function", "call_method", "call_module"):
            name = node.name if node.name in index else None
        else:
            name = None
        if name is not None:
            out[node.name] = (name, index[name])
    return out


def _insert_slots(g: torch.fx.Graph, graph: ModelGraph, slot: Any, prefix: str, edited: dict,
                  signature=None, rewire: bool = False) -> set[str]:
    """A ``slot(value, op index)`` node after every op of ``graph`` in ``g``; with ``rewire``, the op's users read
    the slot's result. Returns the names of the ops read."""
    targets = _slot_targets(g, graph, prefix, signature)
    placeholders = [n for n in g.nodes if n.op == "placeholder"]
    for node in list(g.nodes):
        if node.name not in targets:
            continue
        value = edited.get(node.name, node)  # an op a structural edit rescaled is read after the edit
        at = placeholders[-1] if node.op == "placeholder" else value  # placeholders stay the function's arguments
        with g.inserting_after(at):
            probe = g.call_function(slot, (value, targets[node.name][1]))
        if rewire:
            for user in list(value.users):
                if user is not probe:
                    user.replace_input_with(value, probe)
    return {name for name, _ in targets.values()}


class _Interpreted(torch.fx.Interpreter):
    """The graph run node by node over a root module (fx: the model itself), the slot called on the value of
    every op the pass's recorder reads or a scale edits (its result what the users read): the instrumented
    module's behaviour without generating its code, for the first passes of a program."""

    def __init__(self, module: nn.Module, slots: dict[str, int], slot: "_Slot", graph: torch.fx.Graph | None = None):
        super().__init__(module, graph=graph)
        self.slots, self.slot = slots, slot
        # the constants torch.fx stowed at trace time, kept off the model (see initlint.capture.fx.trace)
        self.constants = {n.target: n.meta[CONSTANT] for n in self.graph.nodes
                          if n.op == "get_attr" and CONSTANT in n.meta}

    def fetch_attr(self, target: str) -> Any:
        if target in self.constants:
            return self.constants[target]
        return super().fetch_attr(target)

    def run_node(self, n: torch.fx.Node) -> Any:
        value = super().run_node(n)
        idx = self.slots.get(n.name)
        return value if idx is None else self.slot(value, idx)

    def run(self, *args: Any, initial_env: dict | None = None, enable_io_processing: bool = True) -> Any:
        """:meth:`torch.fx.Interpreter.run` without its progress bar (a ``tqdm`` made per run: 1-2 ms, more than a
        small model's step) and its error annotation; each node run as :meth:`run_node` runs it, from a plan of
        the graph made once (its op, target, arguments, the values it is the last user of, its slot), without
        the per-node method dispatch, debug log and node-metadata context (which only a trace in progress reads:
        then, and for placeholders, :meth:`run_node` itself)."""
        self.env = env = dict(initial_env) if initial_env is not None else {}
        if enable_io_processing:
            args = self.graph.process_inputs(*args)
        self.args_iter = iter(args)
        plan = self.__dict__.get("plan")
        if plan is None:
            plan = self.plan = self._plan()
        load = env.__getitem__
        lean = not fx_traceback.should_preserve_node_meta
        slot = self.slot
        # the ops the slot does something at: those the recorder reads (None: all) and those a scale edits; at
        # the others it returns the value as it is
        rec = slot.recorder
        active = set() if rec is None else getattr(rec, "instrumented", None)
        scales = getattr(slot, "scales", None) or {}
        try:
            for node, op, target, atoms, args_, kwargs_, dead, idx in plan:
                if node not in env:
                    if not lean or op == "placeholder":
                        env[node] = self.run_node(node)
                    else:
                        a = map_arg(args_, load)
                        k = map_arg(kwargs_, load)
                        if op == "call_function":
                            value = target(*a, **k)
                        elif op == "call_module":
                            value = self._attr(target, atoms)(*a, **k)
                        elif op == "call_method":
                            value = getattr(a[0], target)(*a[1:], **k)
                        elif op == "get_attr":
                            value = self._attr(target, atoms)
                        elif op == "output":
                            value = a[0]
                        else:
                            value = getattr(self, op)(target, a, k)
                        if idx is not None and (active is None or idx in active or idx in scales):
                            value = slot(value, idx)
                        env[node] = value
                for d in dead:
                    del env[d]
                if op == "output":
                    out = env[node]
                    return self.graph.process_outputs(out) if enable_io_processing else out
            return None
        finally:  # the interpreter is kept for the next pass: it must not hold this one's values
            self.env, self.args_iter = {}, iter(())

    def _plan(self) -> list[tuple]:
        last = self.user_to_last_uses if self.garbage_collect_values else {}
        return [(n, n.op, n.target, tuple(n.target.split(".")) if isinstance(n.target, str) else (), n.args,
                 n.kwargs, tuple(last.get(n, ())), self.slots.get(n.name)) for n in self.graph.nodes]

    def _attr(self, target: str, atoms: tuple[str, ...]) -> Any:
        """:meth:`fetch_attr` (one ``getattr`` an atom where it checks with ``hasattr`` first; its error where
        one is missing)."""
        if target in self.constants:
            return self.constants[target]
        value = self.module
        try:
            for atom in atoms:
                value = getattr(value, atom)
        except AttributeError:
            return self.fetch_attr(target)
        return value


def _match_inputs(graph: ModelGraph, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
    """Input tensors matched to INPUT ops in order, by dtype and rank (the caps may have cut their sizes)."""
    pool = [t for t in pytree.tree_leaves((list(args), dict(kwargs))) if isinstance(t, torch.Tensor)]
    found: dict[str, torch.Tensor] = {}
    for op in graph.of_kind(OpKind.INPUT):
        for j, t in enumerate(pool):
            if len(t.shape) == len(op.shape or ()) and str(t.dtype).removeprefix("torch.") == op.dtype:
                found[op.name] = pool.pop(j)
                break
    return found





__all__ = ["Runnable", "run_pass", "LowPrecisionProducts", "instrument", "capped", "keep", "keep_all", "MAX_BATCH",
           "MAX_SPATIAL", "KEEP"]
