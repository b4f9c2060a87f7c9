"""Constants computed in forward: evaluated at capture, so that the engine reads their values.

A tensor that depends on neither the model's inputs nor its parameters (positions from ``arange``, a rotary
embedding's ``cos`` and ``sin`` tables from a buffer of frequencies) has one value whatever the input: the
capture evaluates it and the typed graph holds it as a constant operand, whose statistics are its own, as a
buffer's are. Left to the engine, such a table is estimated as if its entries were drawn independently, and
Llama's ``sin`` table was predicted 0.5 against 0.22 measured (its small angles put most of the weight on
``cos``). Random and in-place ops are never run; masks are evaluated but not folded (see :func:`folds`).
"""

from __future__ import annotations

import torch

from .functions import DROPOUTS, RANDOMS

FOLD_ELEMENTS = 1 << 22  # constants up to 16 MB of float32 are evaluated; larger ones stay estimated
FOLD_RANGE = 1e3  # ... and stand for their values when every entry is within +-1000, which additive masks
# (-1e4, -1e9, finfo.min, -inf) never are: the engine handles masks through the attention they feed

# Functions and methods (canonical names) whose result is random: a constant's dropout is not a constant. The
# capture's random and dropout ops, and the samplers it has no op kind for.
RANDOM = frozenset(RANDOMS + DROPOUTS + ("randperm", "multinomial", "poisson"))


def folds(value: torch.Tensor) -> bool:
    """Whether a constant computed in forward stands in the typed graph for its values (as a buffer does)."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() == 0 \
            or value.numel() > FOLD_ELEMENTS or value.is_meta:
        return False
    v = value.detach()
    return bool(torch.isfinite(v).all()) and float(v.abs().max()) <= FOLD_RANGE


__all__ = ["FOLD_ELEMENTS", "FOLD_RANGE", "RANDOM", "folds"]
