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
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    requires = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    buffers = [
        (m, name, b, None if b is None or b.is_meta else b.detach().clone())
        for m in model.modules()
        for name, b in m._buffers.items()
    ]
    np_state = _numpy_state() if outer else None
    py_state = random.getstate() if outer else None
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    _OPEN.depth = depth + 1
    try:
        yield
    finally:
        _OPEN.depth = depth
        for m, training in modes:
            m.training = training
        for p, req, g in zip(params, requires, grads):
            p.requires_grad_(req)
            p.grad = g
        with torch.no_grad():
            for m, name, b, saved in buffers:
                m._buffers[name] = b  # a forward may have rebound the attribute
                if saved is not None and b.shape == saved.shape:
                    b.copy_(saved)
        if py_state is not None:
            random.setstate(py_state)
        if np_state is not None:
            np_state[0].set_state(np_state[1])
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _numpy_state():
    """numpy's global generator, when the user's code has imported numpy (initlint does not need it)."""
    import sys

    np = sys.modules.get("numpy")
    if np is None:
        return None
    return (np.random, np.random.get_state())
