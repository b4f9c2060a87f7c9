"""The first rung: ``torch.fx`` symbolic tracing with initlint's own tracer, then one shape propagation.

The tracer keeps as leaves only the modules initlint has semantics for (Linear, Conv, norms, activations...)
and opens every other module, ``torch.nn`` ones included, so that what is inside ``nn.MultiheadAttention`` or
``nn.TransformerEncoderLayer`` is seen; when opening one fails on its control flow, the ladder moves on to
``torch.export``. Each node remembers the user's line that created it, by a walk over Python frames.
"""

from __future__ import annotations

import bisect
import dis
import inspect
import math
import sys
from typing import Any

import torch
import torch.fx
from torch import nn

from ..inputs import ExampleInputs
from ..ops import Capture, Location
from ..sources import user_frame
from .assemble import OPAQUE, Assembler, shape_and_dtype
from .constants import FOLD_ELEMENTS, RANDOM, folds
from .normalize import Call, Ref, display_target, function_name, is_known_leaf

try:  # generates the module's Python code on its first call, not at construction: a lint never calls it
    from torch.fx._lazy_graph_module import _LazyGraphModule as _GraphModule
except ImportError:  # pragma: no cover - torch before 2.3
    _GraphModule = torch.fx.GraphModule

_LOC = "initlint_location"
_SHAPE = "initlint_shape"
_VALUE = "initlint_value"  # a call's value, where it depends on no input and no parameter (see .constants)
_LITERAL = "initlint_literal"  # a number or size computed from shapes (q.shape[-1] ** 0.5): a literal, as in export
CONSTANT = "initlint_constant"  # a get_attr node's value when torch.fx stowed it as a constant (see trace)


def _iter(self) -> Any:
    """``torch.fx.Proxy.__iter__``: a proxy unpacked by ``a, b = proxy`` becomes its items, anything else is the
    tracer's ``iter``; the caller's instructions are disassembled once per code object and trace (torch.fx
    disassembles the whole calling function at every unpacking: ~10% of a transformer's capture)."""
    frame = sys._getframe(1)
    code = frame.f_code
    table = self.tracer._instructions
    found = table.get(code)
    if found is None:
        insts = list(dis.get_instructions(code))
        found = table[code] = (insts, [i.offset for i in insts])
    insts, offsets = found
    inst = insts[bisect.bisect_left(offsets, frame.f_lasti) if sys.version_info >= (3, 11) else frame.f_lasti // 2]
    if inst.opname == "UNPACK_SEQUENCE":  # items made lazily, as the unpacking asks, from the caller's frame
        return map(self.__getitem__, range(inst.argval))  # (a generator here would put initlint on the stack)
    return self.tracer.iter(self)


class _Proxy(torch.fx.Proxy):
    __iter__ = _iter

    def __getattr__(self, k: str) -> Any:
        return _Attribute(self, k)


class _Attribute(torch.fx.proxy.Attribute):
    __iter__ = _iter

    def __getattr__(self, k: str) -> Any:
        return _Attribute(self, k)


# Arguments torch.fx's create_arg passes through as they are (its ``base_types`` but tensors, which it looks up
# among the buffers, and symbolic numbers)
_ATOMS = frozenset({str, int, float, bool, complex, type(None), type(...), torch.dtype, torch.device,
                    torch.memory_format, torch.layout})


class Tracer(torch.fx.Tracer):
    def __init__(self, autowrap_modules=(math,), autowrap_functions=(), param_shapes_constant=False):
        # The modules whose functions torch.fx wraps at the start of every trace (``math``) are wrapped here
        # instead, by wrappers made once per process (see trace); ``_autowrap_function_ids`` lists their functions
        # (torch.fx lists them anew for each tracer), for the ``from math import sqrt`` that torch.fx still finds
        # in the globals of the code it traces.
        if _create_wrapped_func is None:  # a torch.fx without the private helper: its own autowrap, per trace
            super().__init__(autowrap_modules, autowrap_functions, param_shapes_constant)
            autowrap_modules = ()
        else:
            super().__init__((), autowrap_functions, param_shapes_constant)
        self._wrap_modules = tuple(autowrap_modules)
        for module in self._wrap_modules:
            self._autowrap_function_ids.update(map(id, _wrappers(module)[0].values()))
        self._frames: dict = {}  # code object -> what it is, for user_frame: one classification per trace
        self._instructions: dict = {}  # code object -> its instructions and their offsets, for _iter

    def trace(self, root, concrete_args=None):
        """torch.fx's trace, with ``math.sqrt`` and the other functions of the autowrapped modules swapped for
        torch.fx's own wrappers (which record a call on proxies and call the function on anything else) for the
        trace's duration. torch.fx makes a new wrapper for each of math's 60 functions at every trace, by
        ``functools.wraps``: 0.5-1 ms per trace, a fixed cost of each lint; these are made once per process, and
        marked as patched, so that torch.fx leaves them be."""
        patched = []
        try:
            for module in self._wrap_modules:
                table = vars(module)
                originals, wrappers = _wrappers(module)
                swap = [name for name, fn in originals.items() if table.get(name) is fn]
                patched.append((table, {name: originals[name] for name in swap}))
                table.update({name: wrappers[name] for name in swap})
            return super().trace(root, concrete_args)
        finally:
            for table, back in reversed(patched):
                table.update(back)

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return _Proxy(node, self)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_known_leaf(m)

    def create_arg(self, a: Any) -> Any:
        """torch.fx's, answered first for what most arguments are: one of this tracer's proxies (its node), a
        plain number, string, dtype or None (itself), or a plain tuple or list of those. torch.fx's own answer is
        the same, after a dozen checks each (whether it is a parameter, a buffer, a module, a named tuple, a
        constant to stow...) whose ``isinstance(a, nn.Parameter)`` runs Python code: 4% of a trace."""
        kind = type(a)
        if kind is _Proxy or kind is _Attribute:
            return a.node
        if kind in _ATOMS:
            return a
        if kind is tuple:
            return tuple([self.create_arg(x) for x in a])
        if kind is list:
            return [self.create_arg(x) for x in a]
        return super().create_arg(a)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *rest, **kw):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest, **kw)
        if kind not in ("placeholder", "output"):
            proxy.node.meta[_LOC] = user_frame(2, self._frames)
        return proxy


try:  # torch.fx's wrapper maker (private; present since torch 1.8): without it, torch.fx wraps math per trace
    from torch.fx._symbolic_trace import _create_wrapped_func
except ImportError:  # pragma: no cover - a future torch
    _create_wrapped_func = None

# module name -> (function name -> function, function name -> its wrapper)
_WRAPPERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}


def _wrappers(module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """torch.fx's wrapper of each public function of ``module``, made on first use: what ``torch.fx``'s autowrap
    puts in the module's namespace at each trace (a function already patched by a trace in progress is left to
    torch.fx). The functions, and their wrappers, by name."""
    found = _WRAPPERS.get(module.__name__)
    if found is None:
        found, complete = ({}, {}), True
        for name, value in list(vars(module).items()):
            if not name.startswith("_") and callable(value):
                if getattr(value, "__fx_already_patched", False):
                    complete = False  # not the function itself: made again by the next trace
                    continue
                wrapper = _create_wrapped_func(value)
                wrapper.__fx_already_patched = True  # as torch.fx marks its patches: not wrapped twice
                found[0][name], found[1][name] = value, wrapper
        if complete:
            _WRAPPERS[module.__name__] = found
    return found


def trace(model: nn.Module, inputs: ExampleInputs) -> tuple[torch.fx.Graph, list[Any]]:
    """Trace ``model`` and return the graph with the values of its placeholders. Its targets are paths in
    ``model`` (the tracer's root); the ``GraphModule`` a measurement runs is built from both on first use
    (:func:`graph_module`): a lint never runs one."""
    sig = inspect.signature(model.forward)
    bound = sig.bind(*inputs.args, **inputs.kwargs)
    concrete: dict[str, Any] = {}
    for name, p in sig.parameters.items():
        if name in bound.arguments:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        concrete[name] = p.default  # unsupplied arguments keep their defaults, not a proxy
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for n, p in sig.parameters.items() if n in bound.arguments):
        raise TypeError("forward takes *args or **kwargs, which symbolic tracing cannot bind")
    tracer = Tracer()
    own = set(vars(model))
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    finally:
        # torch.fx stows a tensor built in forward (``x * torch.tensor([...])``) as an attribute of the root it
        # traces, the user's model: it is taken off again, and its get_attr nodes carry the value themselves
        constants = {k: vars(model).pop(k) for k in set(vars(model)) - own}
    if constants:
        for node in graph.nodes:
            if node.op == "get_attr" and node.target in constants:
                node.meta[CONSTANT] = constants[node.target]
    values = [bound.arguments[n.target] for n in graph.nodes if n.op == "placeholder" and n.target in bound.arguments]
    return graph, values


def graph_module(model: nn.Module, graph: torch.fx.Graph) -> torch.fx.GraphModule:
    """The runnable module of a traced graph: ``model``'s submodules and tensors at the graph's targets, and the
    constants torch.fx stowed (kept off the model: see :func:`trace`)."""
    constants = {n.target: n.meta[CONSTANT] for n in graph.nodes if n.op == "get_attr" and CONSTANT in n.meta}
    root = model
    if constants:  # a shallow stand-in: the model's attributes, submodules and tensors, and the constants
        root = nn.Module.__new__(nn.Module)
        root.__dict__.update(vars(model))
        root._buffers = {**model._buffers, **constants}
    return _GraphModule(root, graph, type(model).__name__)


def propagate_shapes(root: nn.Module, graph: torch.fx.Graph, values: list[Any]) -> None:
    """ShapeProp's job, by one loop over the nodes: run each on the example values and record its output's shape
    and dtype in ``node.meta``. What ``torch.fx.Interpreter.run`` computes (placeholders from ``values``, then
    their defaults; attributes and submodules from ``root``; each value dropped after its last use), without its
    per-run set-up (a table of every submodule, a progress bar) and per-node dispatch: a fixed cost of a few
    hundred microseconds to milliseconds on ms-sized models."""
    nodes = graph.nodes
    last_uses: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    seen: set[torch.fx.Node] = set()
    for node in reversed(nodes):
        for n in node.all_input_nodes:
            if n not in seen:
                seen.add(n)
                last_uses.setdefault(node, []).append(n)
    env: dict[torch.fx.Node, Any] = {}
    known: set[torch.fx.Node] = set()  # nodes whose value depends on no input and no parameter
    static: set[torch.fx.Node] = set()  # nodes whose value is a number or size that depends on shapes only
    load = env.__getitem__
    args_iter = iter(graph.process_inputs(*values))
    with torch.no_grad():
        for node in nodes:
            op = node.op
            if op == "placeholder":
                result = _placeholder(node, args_iter)
            elif op == "output":
                result = torch.fx.node.map_arg(node.args[0], load)
            else:
                args = torch.fx.node.map_arg(node.args, load)
                kwargs = torch.fx.node.map_arg(node.kwargs, load)
                if op == "call_function":
                    result = node.target(*args, **kwargs)
                elif op == "call_method":
                    self_obj, *tail = args
                    result = getattr(self_obj, node.target)(*tail, **kwargs)
                elif op == "call_module":
                    result = _submodule(root, node.target)(*args, **kwargs)
                elif op == "get_attr":
                    result = _fetch(root, node.target, node)
                else:  # pragma: no cover - fx has no other node kinds
                    raise RuntimeError(f"unknown fx node kind {op!r}")
            env[node] = result
            if type(result) is torch.Tensor:  # most results: sizes are ints, the dtype's name is known
                node.meta[_SHAPE] = (tuple(result.shape), _DTYPE_NAMES.get(result.dtype)
                                     or shape_and_dtype(result)[1])
            else:
                node.meta[_SHAPE] = shape_and_dtype(result) if _has_tensor(result) else (None, None)
            if op in ("call_function", "call_method") and _static(node, result, static):
                static.add(node)
                node.meta[_LITERAL] = result
            elif op != "output" and _known(node, result, known):
                known.add(node)
                if op in ("call_function", "call_method") and isinstance(result, torch.Tensor) \
                        and result.numel() <= FOLD_ELEMENTS:
                    node.meta[_VALUE] = result.detach().clone()  # a later in-place op may write the original
            if op == "output":
                return
            for dead in last_uses.get(node, ()):
                del env[dead]


_SHAPE_OF = frozenset({"size", "dim", "ndimension", "numel", "nelement"})


def _static(node: torch.fx.Node, result: Any, static: set) -> bool:
    """Whether ``node`` computes a number or a size from shapes alone (``x.shape``, ``x.size(-1)``, then
    arithmetic, ``math.sqrt``...): torch.fx traces it, torch.export specializes it to its value."""
    if not _is_static_value(result):
        return False
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in ("shape", "ndim")
    if node.op == "call_method" and node.target in _SHAPE_OF:
        return True
    return bool(node.all_input_nodes) and all(n in static for n in node.all_input_nodes)


def _is_static_value(value: Any) -> bool:
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return True
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)  # torch.Size


def _known(node: torch.fx.Node, result: Any, known: set) -> bool:
    """Whether ``node``'s value is a constant of the model: a buffer or stowed constant, or a deterministic
    function of constants (and literals)."""
    op = node.op
    if op == "get_attr":
        return isinstance(result, torch.Tensor) and not isinstance(result, nn.Parameter)
    if op != "call_function" and op != "call_method":  # placeholders, modules
        return False
    if not all([n in known for n in node.all_input_nodes]):  # what most calls fail, and the cheapest
        return False
    name = function_name(node.target) if op == "call_function" else _method_name(node.target)
    if name in RANDOM or name.endswith("_"):
        return False
    return not isinstance(result, torch.Tensor) or not result.requires_grad


def _placeholder(node: torch.fx.Node, args_iter) -> Any:
    if node.target.startswith("*"):
        return list(args_iter)
    try:
        return next(args_iter)
    except StopIteration as si:
        if node.args:
            return node.args[0]
        raise RuntimeError(f"Expected positional argument for parameter {node.target}, but one was not passed in!") \
            from si


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_tensor(v) for v in value)
    return False


def to_graph(graph: torch.fx.Graph, model: nn.Module, name: str, sites: dict[int, Location],
             notes: tuple[str, ...] = ()):
    with torch.no_grad():  # weight statistics: the same values, without autograd's bookkeeping on each call
        return _to_graph(graph, model, name, sites, notes)


def _to_graph(graph: torch.fx.Graph, model: nn.Module, name: str, sites: dict[int, Location],
              notes: tuple[str, ...]):
    asm = Assembler(model, sites)
    env: dict[str, Any] = {}

    def resolve(a):
        return torch.fx.node.map_arg(a, lambda n: env.get(n.name, OPAQUE))

    outputs: list[Ref] = []
    for node in graph.nodes:
        shape, dtype = node.meta.get(_SHAPE, (None, None))
        loc = node.meta.get(_LOC)
        stack = node.meta.get("nn_module_stack") or {}
        owner = next(reversed(stack.values()))[0] if stack else ""
        if node.op == "placeholder":
            if shape is None:
                env[node.name] = OPAQUE
                continue
            from ..ops import Op, OpKind

            env[node.name] = asm.add(Op(node.name, OpKind.INPUT, "input", shape=shape, dtype=dtype))
        elif node.op == "get_attr":
            value = _fetch(model, node.target, node)
            if isinstance(value, torch.Tensor):
                qual = asm.qualname_of(value) or node.target
                env[node.name] = asm.param(qual, value, node.name)
            else:
                env[node.name] = value
        elif node.op == "call_module":
            leaf = asm.module_at(node.target)
            if leaf is None:
                leaf = model.get_submodule(node.target)
            call = Call(type(leaf).__name__, list(resolve(node.args)), dict(resolve(node.kwargs)))
            env[node.name] = asm.call(node.name, call, f"nn.{type(leaf).__name__}", node.target, loc, shape, dtype,
                                      leaf=leaf)
        elif _LITERAL in node.meta:  # a number from shapes: the value, as torch.export gives it
            env[node.name] = node.meta[_LITERAL]
        elif _VALUE in node.meta and folds(node.meta[_VALUE]):  # a table computed from constants: its values
            env[node.name] = asm.param(node.name, node.meta[_VALUE], node.name)
        elif node.op in ("call_function", "call_method"):
            fname = function_name(node.target) if node.op == "call_function" else _method_name(node.target)
            call = Call(fname, list(resolve(node.args)), dict(resolve(node.kwargs)), out_shape=shape)
            target = display_target(node.target) if node.op == "call_function" else f"Tensor.{node.target}"
            env[node.name] = asm.call(node.name, call, target, owner, loc, shape, dtype)
        elif node.op == "output":
            from .normalize import flatten_refs

            outputs = flatten_refs(resolve(node.args[0]))
    return asm.finish(name, Capture.FX, outputs, notes)


def _method_name(target: str) -> str:
    from .normalize import canonical

    return canonical(target)


_DTYPE_NAMES = {d: str(d).removeprefix("torch.") for d in (torch.float32, torch.float64, torch.float16,
                                                            torch.bfloat16, torch.int64, torch.int32, torch.bool)}


def _submodule(root: nn.Module, target: str) -> Any:
    """The module a ``call_module`` node names, by the submodule tables (what torch.fx's path names): a walk by
    ``getattr`` calls nn.Module's Python ``__getattr__`` twice a step. Anything else, by :func:`_fetch`."""
    module = root
    for part in target.split("."):
        module = vars(module).get("_modules", {}).get(part)
        if module is None:
            return _fetch(root, target)
    return module


def _fetch(root: nn.Module, target: str, node: torch.fx.Node | None = None):
    if node is not None and CONSTANT in node.meta:
        return node.meta[CONSTANT]
    obj: Any = root
    for i, part in enumerate(target.split(".")):
        if not hasattr(obj, part):
            raise RuntimeError(f"Node referenced nonexistent target {'.'.join(target.split('.')[:i + 1])}")
        obj = getattr(obj, part)
    return obj
