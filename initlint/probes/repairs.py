"""The machine forms of fixes that many probes share: re-initialize, rescale or zero a named parameter of the
copy a repair works on. Draws come from a generator seeded per parameter name, so a repair is the same on
every run and never touches the global random number generators.

The probe stage's copy is a :func:`twin`: a deep copy of the modules and buffers that shares the parameters
with the user's model until a repair writes one (copy on write: :func:`writable` gives the copy its own tensor
first). A model of a hundred megabytes is not cloned to re-initialize one layer. Every write a built-in repair
makes goes through this module (:func:`writable`, :func:`own`).

>>> from torch import nn
>>> m = nn.Linear(4, 4)
>>> reinit_normal(m, "weight", 0.5)
>>> abs(float(m.weight.std()) - 0.5) < 0.5
True
"""

from __future__ import annotations

import copy
import copyreg
import weakref
import zlib
from collections import OrderedDict

import torch
from torch import nn

from .records import Unrepairable

REPAIR_SEED = 0x5EED


def parameter(model: nn.Module, name: str) -> torch.Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:
        try:
            return model.get_buffer(name)
        except AttributeError:
            raise Unrepairable(f"`{name}` is not a parameter of the model") from None


# Twins by the ids of the parameters they still share with the model they were made from, each with where the
# twin holds it (module, name): a tied parameter is held in several places.
_SHARED: "weakref.WeakKeyDictionary[nn.Module, dict[int, list]]" = weakref.WeakKeyDictionary()


def twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for repairs: modules, buffers and other state deep-copied, parameters shared until a
    repair writes them through :func:`writable` or :func:`own`. Nothing that writes a parameter in place by
    another path may be given one (a third-party repair gets a full ``copy.deepcopy``)."""
    params = [p for m in model.modules() for p in m._parameters.values() if p is not None]
    copied = _deepcopy(model, {id(p): p for p in params})
    held: dict[int, list] = {id(p): [] for p in params}
    for m in copied.modules():
        for k, v in m._parameters.items():
            if v is not None and id(v) in held:
                held[id(v)].append((m, k))
    _SHARED[copied] = held
    return copied


_NIL = object()
_PLAIN: dict[type, bool] = {}
_ATOMIC = frozenset(cls for cls, f in copy._deepcopy_dispatch.items() if f is copy._deepcopy_atomic)


def _plain(cls: type) -> bool:
    """Whether ``copy.deepcopy`` copies instances of the module class ``cls`` by the default protocol: a new
    ``cls.__new__(cls)`` given the deep copy of ``__getstate__()`` through ``__setstate__``."""
    if cls not in _PLAIN:
        _PLAIN[cls] = (getattr(cls, "__deepcopy__", None) is None and cls.__reduce_ex__ is object.__reduce_ex__
                       and cls.__reduce__ is object.__reduce__ and cls not in copyreg.dispatch_table
                       and not hasattr(cls, "__getnewargs_ex__") and not hasattr(cls, "__getnewargs__")
                       and not issubclass(cls, (list, dict)) and hasattr(cls, "__setstate__"))
    return _PLAIN[cls]


def _deepcopy(x, memo: dict):
    """``copy.deepcopy(x, memo)``, the same copy, with the general machinery (a ``__reduce_ex__`` and a
    reconstruction per object) skipped for what a model's state is mostly made of: its modules, their attribute
    dicts, the empty hook dicts in them, lists, sets of names and atomic values. Anything else (tensors, tuples,
    other objects, a module class with a copy protocol of its own) goes to ``copy.deepcopy`` with the same memo.
    The twin of a small model is made in a third of the time."""
    y = memo.get(id(x), _NIL)
    if y is not _NIL:
        return y
    cls = type(x)
    if cls in _ATOMIC:
        return x
    if cls is dict or cls is OrderedDict:
        y = cls()
        memo[id(x)] = y
        if x:
            _copy_items(x, y, memo)
        return y
    if cls is list:
        y = []
        memo[id(x)] = y
        for v in x:
            y.append(v if type(v) in _ATOMIC else _deepcopy(v, memo))
        return y
    if cls is set and all(type(v) in _ATOMIC for v in x):  # a module's set of non-persistent buffer names
        y = set(x)
        memo[id(x)] = y
        return y
    if isinstance(x, nn.Module) and _plain(cls) and "__deepcopy__" not in x.__dict__:
        state = x.__getstate__()
        if type(state) is dict:
            y = cls.__new__(cls)
            memo[id(x)] = y
            copied: dict = {}
            _copy_items(state, copied, memo)
            y.__setstate__(copied)
            return y
    return copy.deepcopy(x, memo)


def _copy_items(x: dict, y: dict, memo: dict) -> None:
    atomic = _ATOMIC
    for k, v in x.items():
        if type(k) not in atomic:
            k = _deepcopy(k, memo)
        cls = type(v)
        if cls in atomic:
            y[k] = v
        elif (cls is OrderedDict or cls is dict) and not v and id(v) not in memo:  # a module's empty hook dicts
            y[k] = memo[id(v)] = cls()
        else:
            y[k] = _deepcopy(v, memo)


def _unshare(model: nn.Module, p: torch.Tensor, new: torch.Tensor | None = None) -> torch.Tensor:
    """``p``, or, where ``model`` is a twin still sharing it, a copy of it (or ``new``) put in its place everywhere
    in ``model`` (tied uses stay tied; ``setattr``, so that modules that keep lists of their weights, RNNs, see
    it)."""
    shared = _SHARED.get(model)
    if shared is None or id(p) not in shared:
        return p
    new = copy.deepcopy(p) if new is None else new
    for m, k in shared.pop(id(p)):
        setattr(m, k, new)
    return new


def writable(model: nn.Module, name: str) -> torch.Tensor:
    """The parameter (or buffer) ``name`` of ``model``, its own to write in place (see :func:`twin`)."""
    return _unshare(model, parameter(model, name))


def swap_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put a new parameter holding ``value`` (a new shape, say) where ``model`` holds the parameter ``name``:
    everywhere a twin holds it, tied uses staying tied."""
    old = parameter(model, name)
    new = nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else value
    if _unshare(model, old, new) is new:
        return
    owner, _, leaf = name.rpartition(".")
    setattr(submodule(model, owner), leaf, new)


def own(model: nn.Module, module: nn.Module) -> None:
    """Every parameter under ``module`` (a submodule of ``model``) made ``model``'s own to write in place."""
    for p in [p for m in module.modules() for p in m._parameters.values() if p is not None]:
        _unshare(model, p)


def generator(name: str, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(REPAIR_SEED ^ zlib.crc32(name.encode()))


# Unit normal draws per model copy, by parameter name and shape: the repairs of several findings on one layer
# (IL101, IL301 and IL303 on the same weight) re-initialize it from the same seeded draw, drawn once.
_DRAWS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _unit_draw(model: nn.Module, name: str, shape: torch.Size) -> torch.Tensor:
    drawn = _DRAWS.setdefault(model, {})
    key = (name, tuple(shape))
    if key not in drawn:
        drawn[key] = torch.randn(shape, generator=generator(name), dtype=torch.float32)
    return drawn[key]


def forget(model: nn.Module) -> None:
    """Drop the draws kept for ``model`` (a copy handed to the user keeps none)."""
    _DRAWS.pop(model, None)


def reinit_normal(model: nn.Module, name: str, std: float, rows: slice | None = None) -> None:
    """``nn.init.normal_(model.get_parameter(name), 0, std)`` (only ``rows`` of it when given), seeded."""
    p = parameter(model, name)
    shared = _SHARED.get(model)
    if rows is None and shared is not None and id(p) in shared and type(p) is nn.Parameter \
            and p.dtype == torch.float32 and p.device.type == "cpu":
        # a twin's shared weight re-drawn whole: the draw becomes its own tensor (no copy of the old one to overwrite)
        new = nn.Parameter(_unit_draw(model, name, p.shape) * std, requires_grad=p.requires_grad)
        _unshare(model, p, new)
        return
    p = writable(model, name)
    target = p if rows is None else p[rows]
    unit = _unit_draw(model, name, target.shape)
    with torch.no_grad():
        if p.dtype == unit.dtype:  # the same values as ``unit * std``, without a temporary of the layer's size
            target.copy_(unit)
            target.mul_(std)
        else:
            target.copy_((unit * std).to(p.device, p.dtype))


def scale(model: nn.Module, name: str, factor: float, rows: slice | None = None) -> None:
    p = writable(model, name)
    with torch.no_grad():
        (p if rows is None else p[rows]).mul_(factor)


def zero(model: nn.Module, name: str) -> None:
    with torch.no_grad():
        writable(model, name).zero_()


def orthogonal(model: nn.Module, name: str) -> None:
    p = writable(model, name)
    q = torch.empty(p.shape, dtype=torch.float32)
    gen = generator(name)
    a = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    q.copy_(u @ vh)
    with torch.no_grad():
        p.copy_(q.to(p.device, p.dtype))


def eye(model: nn.Module, name: str) -> None:
    p = writable(model, name)
    with torch.no_grad():
        p.copy_(torch.eye(*p.shape, dtype=p.dtype, device=p.device))


def submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        raise Unrepairable(f"`{path}` is not a submodule of the model") from None


def replace(model: nn.Module, path: str, new: nn.Module) -> None:
    """Swap the submodule at ``path`` for ``new``."""
    if not path:
        raise Unrepairable("the layer is the whole model: return the replacement instead")
    parent, _, leaf = path.rpartition(".")
    setattr(submodule(model, parent), leaf, new)


__all__ = ["parameter", "twin", "writable", "own", "swap_parameter", "reinit_normal", "forget", "scale", "zero",
           "orthogonal", "eye", "submodule", "replace", "REPAIR_SEED"]
