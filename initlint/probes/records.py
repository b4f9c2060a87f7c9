"""The records probes hand each other: what a probe asks the shared pass for, what the pass saw, what a probe
concludes, and the structural edits a repair asks the runner to make.

A probe never runs the model for a per-op statistic itself: it names the ops and the reductions it needs
(:class:`Needs`), the stage merges every finding's needs into one forward and backward pass, and the probe
reads the result from its :class:`Context`. Probes that need another experiment (a layer alone on random
input, the same blocks arranged Pre-LN, an autocast forward) run it from the context's model.

>>> judge(12.0, 10.0), judge(9.0, 10.0), judge(2.0, 10.0)
(<ProbeStatus.CONFIRMED: 'confirmed'>, <ProbeStatus.INCONCLUSIVE: 'inconclusive'>, <ProbeStatus.NOT_REPRODUCED: 'not-reproduced'>)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from ..findings import Finding, ProbeStatus
from ..graph import ModelGraph, Signal
from ..inputs import ExampleInputs

# Between "confirmed" (the measured badness reaches the probe's threshold) and "not reproduced" (it stays below
# threshold / GRAY) lies a band where the verdict is "inconclusive". A second moment measured over a few
# thousand elements carries a sampling spread of 5-10% (two standard errors); 1.25 keeps verdicts off it.
GRAY = 1.25


def judge(value: float | None, threshold: float, gray: float = GRAY) -> ProbeStatus:
    """The verdict for a measured badness (larger is worse) against the probe's threshold."""
    if value is None or not math.isfinite(value) and value != math.inf:
        return ProbeStatus.INCONCLUSIVE
    if value >= threshold:
        return ProbeStatus.CONFIRMED
    if value < threshold / gray:
        return ProbeStatus.NOT_REPRODUCED
    return ProbeStatus.INCONCLUSIVE


@dataclass(frozen=True)
class Tap:
    """A reduction of one op's output (or of the gradient at it, ``backward``) computed during the shared pass.

    ``reduce`` gets the detached tensor and returns what the probe will read back (a tensor or a number); it
    runs on the first call of the op only. With ``autocast`` (float16, bfloat16) the tap is read in a forward
    pass under ``torch.autocast`` in that dtype: the stage runs one such pass per dtype for all the taps that ask
    for it, beside the shared pass.
    """

    op: str
    key: str
    reduce: Callable[[torch.Tensor], Any] = field(repr=False, compare=False)
    backward: bool = False
    autocast: torch.dtype | None = None


@dataclass(frozen=True)
class Needs:
    """What one finding's probe reads from the shared pass: second moments of ``ops`` (forward and backward),
    ``taps``, gradient norms of the parameters in ``params`` (qualified names), and forward second moments
    alone of ``forward_ops``. A pass whose needs read no gradient (no ``ops``, ``params`` or backward taps) runs
    no backward, and its forward stops at the last op it reads."""

    ops: frozenset[str] = frozenset()
    taps: tuple[Tap, ...] = ()
    params: frozenset[str] = frozenset()
    forward_ops: frozenset[str] = frozenset()

    @classmethod
    def of(cls, ops: Iterable[str] = (), taps: Iterable[Tap] = (), params: Iterable[str] = (),
           forward_ops: Iterable[str] = ()) -> "Needs":
        return cls(frozenset(o for o in ops if o), tuple(taps), frozenset(params),
                   frozenset(o for o in forward_ops if o))

    def __or__(self, other: "Needs") -> "Needs":
        return Needs(self.ops | other.ops, self.taps + other.taps, self.params | other.params,
                     self.forward_ops | other.forward_ops)

    @property
    def read(self) -> frozenset[str]:
        """The ops whose second moments are read, forward and backward or forward alone."""
        return self.ops | self.forward_ops

    @property
    def gradients(self) -> bool:
        """Whether anything read needs the backward pass."""
        return bool(self.ops or self.params or any(t.backward for t in self.taps))

    @property
    def empty(self) -> bool:
        return not (self.ops or self.taps or self.params or self.forward_ops)


NOTHING = Needs()


@dataclass(frozen=True)
class Evidence:
    """What the shared pass observed."""

    signals: Mapping[str, Signal] = field(default_factory=lambda: MappingProxyType({}))
    taps: Mapping[tuple[str, str], Any] = field(default_factory=lambda: MappingProxyType({}))
    grad_norms: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    error: str | None = None  # the pass could not run: every probe that needed it is inconclusive


@dataclass(frozen=True)
class ScaleAfter:
    """A structural edit: multiply ``op``'s output by ``factor`` before anything uses it (``x = x * factor``
    inserted in forward). The op's taps then read the scaled value, what its users see."""

    op: str
    factor: float


@dataclass(frozen=True)
class SetArgument:
    """A structural edit: call ``op`` with keyword argument ``name`` set to ``value`` (e.g. the ``scale`` of
    ``F.scaled_dot_product_attention``), or where the call passes it by position, ``position``, the argument
    there (``F.conv_transpose2d``'s padding is its fifth, and an exported graph passes every argument so)."""

    op: str
    name: str
    value: Any
    position: int | None = None


Edit = ScaleAfter | SetArgument


class Unrepairable(Exception):
    """A repair that has no machine form for this model: the message says why, in the user's terms."""


@dataclass(frozen=True)
class Measurement:
    """A probe's result: the measured numbers (keys as in ``Finding.predicted`` where they measure the same
    quantity) and the verdict."""

    numbers: Mapping[str, float]
    status: ProbeStatus
    detail: str = ""


@dataclass(frozen=True)
class Context:
    """What a probe measures with.

    ``model`` is the user's model (or, after a repair, the repaired deep copy); ``graph`` the captured graph
    whose op names the evidence uses; ``inputs`` the example inputs after the probe's batch and spatial caps;
    ``before`` this finding's measurement on the user's model, when measuring after a fix.
    """

    model: nn.Module
    graph: ModelGraph
    inputs: ExampleInputs
    device: torch.device
    seed: int
    evidence: Evidence
    runnable: Any = None  # the runner's callable for the captured graph (precision probes run it under autocast)
    before: Measurement | None = None

    def signal(self, op: str | None) -> Signal | None:
        return None if op is None else self.evidence.signals.get(op)

    def second(self, op: str | None) -> float | None:
        s = self.signal(op)
        return None if s is None else s.forward.second

    def backward_second(self, op: str | None) -> float | None:
        s = self.signal(op)
        return None if s is None or s.backward is None else s.backward.second

    def tap(self, op: str, key: str) -> Any:
        return self.evidence.taps.get((op, key))

    def grad_norm(self, param: str) -> float | None:
        return self.evidence.grad_norms.get(param)

    def missing(self, what: str) -> Measurement:
        """The inconclusive measurement of a probe whose evidence is absent."""
        why = f": {self.evidence.error}" if self.evidence.error else ""
        return Measurement({}, ProbeStatus.INCONCLUSIVE, f"{what} was not observed{why}")


def finding_op(graph: ModelGraph, finding: Finding):
    """The op a finding points at, or :class:`Unrepairable` when the graph has no such op."""
    if finding.op is None or finding.op not in graph.ops:
        raise Unrepairable(f"the finding names no op of the captured graph ({finding.op!r})")
    return graph.op(finding.op)


def needs_nothing(graph: ModelGraph, finding: Finding) -> Needs:
    return NOTHING


def finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is not positive."""
    if a is None or b is None or not b > 0.0 or not math.isfinite(a):
        return None
    return a / b


def badness(factor: float | None) -> float | None:
    """How far a factor is from 1 either way: max(f, 1/f); None for a missing or non-positive one."""
    if factor is None or not factor > 0.0:
        return None if factor is None or factor != 0.0 else math.inf
    return max(factor, 1.0 / factor)


__all__ = ["GRAY", "judge", "Tap", "Needs", "NOTHING", "Evidence", "ScaleAfter", "SetArgument", "Edit",
           "Unrepairable", "Measurement", "Context", "finding_op", "needs_nothing", "finite", "ratio", "badness"]
