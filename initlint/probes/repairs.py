"""The machine forms of fixes that many probes share: re-initialize, rescale or zero a named parameter of the
deep copy a repair works on. Draws come from a generator seeded per parameter name, so a repair is the same on
every run and never touches the global random number generators.

>>> from torch import nn
>>> m = nn.Linear(4, 4)
>>> reinit_normal(m, "weight", 0.5)
>>> abs(float(m.weight.std()) - 0.5) < 0.5
True
"""

from __future__ import annotations

import weakref
import zlib

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
    target = p if rows is None else p[rows]
    draw = _unit_draw(model, name, target.shape) * std
    with torch.no_grad():
        target.copy_(draw.to(p.device, p.dtype))


def scale(model: nn.Module, name: str, factor: float, rows: slice | None = None) -> None:
    p = parameter(model, name)
    with torch.no_grad():
        (p if rows is None else p[rows]).mul_(factor)


def zero(model: nn.Module, name: str) -> None:
    with torch.no_grad():
        parameter(model, name).zero_()


def orthogonal(model: nn.Module, name: str) -> None:
    p = parameter(model, name)
    q = torch.empty(p.shape, dtype=torch.float32)
    gen = generator(name)
    a = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    q.copy_(u @ vh)
    with torch.no_grad():
        p.copy_(q.to(p.device, p.dtype))


def eye(model: nn.Module, name: str) -> None:
    p = parameter(model, name)
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


__all__ = ["parameter", "reinit_normal", "forget", "scale", "zero", "orthogonal", "eye", "submodule", "replace",
           "REPAIR_SEED"]
