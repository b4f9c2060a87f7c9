"""The records transfer functions trade: what is known about an op's output, and what an op does to it.

An :class:`Est` describes one op's output as its consumers see it: second moment and mean, the variance of
its per-unit (per-feature, per-channel) means, and its *distribution* as values on the grid of a source op
(see :mod:`initlint.gains`). Ops that are elementwise functions of one source (``x + x``, ``x * sigmoid(x)``,
GELU written out, ``x.pow(2)``) share that source's grid, so operands that are the same random variable are
combined exactly instead of being treated as independent. Anything else (a weight layer, a norm, a sum of
independent operands) starts a new source.

A transfer function returns a :class:`Step`: the forward statistics and, for each input, how the gradient
goes back: a :class:`Deriv` (an elementwise derivative on the shared grid, so same-source gradients add
coherently) or a :class:`Factor` (a multiplier of the gradient's second moment).

>>> e = Est(1.0, 0.0)
>>> e.variance, e.source is None
(1.0, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .gains import Rule, gaussian
from .graph import ModelGraph
from .ops import Op


Rows = tuple[tuple[float, float], ...]  # (fraction of the rows, their second moment), fractions summing to 1


@dataclass(frozen=True)
class Est:
    second: float
    mean: float = 0.0
    unit: float = 0.0  # variance across units (features, channels) of their means over samples and positions
    source: str | None = None  # the op whose grid ``values`` live on
    values: torch.Tensor | None = field(default=None, repr=False)
    slope: float = 1.0  # E[d values / d source]: how per-unit offsets of the source come through
    shape: tuple[int, ...] | None = None
    channels_first: bool = False  # the unit dimension is 1 (conv feature maps), else the last one
    requires_grad: bool = False
    floating: bool = True
    rows: Rows | None = None  # rows of different scale (a CLS token concatenated to patches); None: alike

    @property
    def variance(self) -> float:
        return max(self.second - self.mean * self.mean, 0.0)

    @property
    def numel(self) -> int | None:
        return None if self.shape is None else math.prod(self.shape)

    @property
    def rank(self) -> int:
        return len(self.shape or ())

    @property
    def unit_dim(self) -> int:
        return 1 if self.channels_first and self.rank >= 2 else self.rank - 1


@dataclass(frozen=True)
class Deriv:
    """The elementwise derivative of the output with respect to an operand on the same grid."""

    value: torch.Tensor | float


@dataclass(frozen=True)
class Factor:
    """The gradient's second moment at the operand is ``gain`` times the one at the output; ``weights``, values
    on the operand's grid averaging to one, say which of its values take more of it (a max pool's maxima)."""

    gain: float
    weights: torch.Tensor | None = field(default=None, repr=False)


Grad = Deriv | Factor | None


@dataclass(frozen=True)
class Step:
    """What a transfer function says about one op.

    With ``values`` the op is an elementwise function on the grid of its operands' common ``source``: the
    engine derives the moments from the values. Without, the op starts a new source, distributed as ``rule``
    (default: Gaussian of ``second`` and ``mean``).
    """

    second: float = 0.0
    mean: float = 0.0
    unit: float = 0.0
    values: torch.Tensor | None = field(default=None, repr=False)
    source: str | None = None
    slope: float = 1.0
    rule: Rule | None = field(default=None, repr=False)
    own: bool = False  # ``second`` and ``mean`` are ``rule``'s own moments: nothing for ``matched`` to adjust
    grads: tuple[Grad, ...] = ()
    channels_first: bool | None = None  # None: as the first operand
    rows: Rows | None = None  # set by ops that make rows differ (concatenation along rows)
    row_parts: tuple[int, ...] = ()  # concatenation: how many of ``rows`` each operand brought
    row_gains: tuple[float, ...] = ()  # norm: the backward gain of each of the operand's rows

    def gaussian_rule(self) -> Rule:
        return self.rule or gaussian(self.mean, max(self.second - self.mean * self.mean, 0.0))


@dataclass(frozen=True)
class Ctx:
    """What transfer functions may consult besides their operands."""

    graph: ModelGraph
    rules: dict[str, Rule]  # source op -> its distribution
    causal: frozenset[str] = frozenset()  # attention ops known to apply a causal mask
    training: bool = True

    ests: dict[str, Est] = field(default_factory=dict)  # every op's estimate so far

    def rule(self, est: Est) -> Rule:
        return self.rules[est.source]

    def source_est(self, est: Est) -> Est:
        """The estimate of the op whose grid ``est`` lives on."""
        return self.ests[est.source]

    def same_source(self, ins: Sequence[Est]) -> str | None:
        """The source every operand is a function of, or None."""
        sources = {e.source for e in ins}
        return next(iter(sources)) if len(sources) == 1 else None

    def expect(self, est: Est, fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
        return self.rule(est).expect(fn(est.values))


Transfer = Callable[[Op, Sequence[Est], Ctx], "Step | None"]


def bcast(op: Op, operand: Est) -> float:
    """How many output elements one operand element feeds: gradients of broadcast copies add up."""
    n_out, n_in = op.numel, operand.numel
    if not n_out or not n_in or n_in >= n_out:
        return 1.0
    return n_out / n_in


def numel(shape: tuple[int, ...] | None) -> int | None:
    return None if shape is None else math.prod(shape)


__all__ = ["Est", "Step", "Deriv", "Factor", "Grad", "Ctx", "Transfer", "Rows", "bcast", "numel"]
