"""Leaving the user's model exactly as it was.

:func:`preserved` snapshots what running a model can change (buffers such as BatchNorm running statistics,
train/eval mode, ``requires_grad``, ``.grad``, the random number generators) and puts it all back on exit,
whatever happened inside. Parameters are never written by initlint; a probe that must change weights works
on a deep copy. Inside another :func:`preserved` (a probe's passes within the probe stage) Python's and numpy's
generators are left to the outermost one, which restores them on its exit (numpy's state alone costs a tenth
of a millisecond a pass); torch's are restored by each.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator

import torch
from torch import nn

_OPEN = threading.local()  # how many preserved() contexts this thread has open


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    depth = getattr(_OPEN, "depth", 0)
    outer = depth == 0
    modules = _modules(model)
    modes = [m.training for m in modules]
    params = _parameters(modules)
    requires = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    buffers = [(m, name, b) for m in modules for name, b in m._buffers.items()]
    with torch.no_grad():  # copies outside autograd, without a detached alias each (half the cost)
        saved = [None if b is None or b.is_meta else b.clone() for _, _, b in buffers]
    np_state = _numpy_state() if outer else None
    py_state = random.getstate() if outer else None
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    _OPEN.depth = depth + 1
    try:
        yield
    finally:
        _OPEN.depth = depth
        # Each attribute is written back where it differs (reading is cheap, and nn.Module.__setattr__ and the
        # requires_grad_ and .grad setters are not); the buffers' values are written back whatever they read.
        for m, training in zip(modules, modes):
            if m.training is not training:
                m.training = training
        for p, req, g in zip(params, requires, grads):
            if p.requires_grad is not req:
                p.requires_grad_(req)
            if p.grad is not g:
                p.grad = g
        _restore_buffers(buffers, saved)
        if py_state is not None:
            random.setstate(py_state)
        if np_state is not None:
            np_state[0].set_state(np_state[1])
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _modules(model: nn.Module) -> list[nn.Module]:
    """``model`` and its submodules, each once: what ``model.modules()`` lists, in another order, by a walk
    without its generators (a third of the cost)."""
    found, seen, i = [model], {id(model)}, 0
    while i < len(found):
        for m in found[i]._modules.values():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                found.append(m)
        i += 1
    return found


def _parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    """The parameters of ``modules``, each once (``model.parameters()``, read from the walk above)."""
    found, seen = [], set()
    for m in modules:
        for p in m._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                found.append(p)
    return found


def _restore_buffers(buffers: list, saved: list) -> None:
    """Rebind each buffer to its tensor (a forward may have rebound the attribute) and copy its saved values
    back, the plain tensors' by one ``torch._foreach_copy_`` (copies grouped by device and dtype in C++, a
    third of the cost of one ``copy_`` each); a tensor subclass, or a buffer whose shape a forward changed in
    place, is copied on its own or left as it is, as before."""
    plain_dst, plain_src = [], []
    with torch.no_grad():
        for (m, name, b), copy in zip(buffers, saved):
            m._buffers[name] = b
            if copy is None or b.shape != copy.shape:
                continue
            if type(b) is torch.Tensor and _FOREACH_COPY is not None:
                plain_dst.append(b)
                plain_src.append(copy)
            else:
                b.copy_(copy)
        if plain_dst:
            try:
                _FOREACH_COPY(plain_dst, plain_src)
            except Exception:  # noqa: BLE001 - a combination the fused copy refuses: one at a time
                for b, copy in zip(plain_dst, plain_src):
                    b.copy_(copy)


_FOREACH_COPY = getattr(torch, "_foreach_copy_", None)


def _numpy_state():
    """numpy's global generator, when something has imported ``numpy.random`` (initlint does not need it). numpy 2
    imports it on first use, not with numpy (which torch imports): until then there is no generator, and no state
    to keep; asking for it here would import it, and cost every lint a tenth of a millisecond to save and restore
    a state nobody draws from."""
    import sys

    np_random = sys.modules.get("numpy.random")
    if np_random is None:
        return None
    return (np_random, np_random.get_state())
