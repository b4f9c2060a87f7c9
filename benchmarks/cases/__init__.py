"""The benchmark suite: (defective, fixed) model pairs for every rule, and a healthy zoo.

Every :class:`Case` builds a small, seeded CPU model with its example inputs and declares the codes that must
be reported (``must``) and the codes that must not (``must_not``). A code is *reported* when at least one of
its findings is at warning or error level; an ``info`` (a defect a normalization absorbs) is not a report.
Codes in neither set are not scored for that case: they are consequences of the same defect that another rule
may legitimately also report (128x too-large weights drift the signal, IL303, as well as being off-scale,
IL101), declared per case with a comment.

>>> from benchmarks.cases import CASES
>>> pairs = [c for c in CASES if c.rule == "IL201"]
>>> len(pairs) >= 6, pairs[0].must, "IL201" in pairs[1].must_not
(True, frozenset({'IL201'}), True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

CODES: tuple[str, ...] = (
    "IL101", "IL102", "IL103", "IL104", "IL105", "IL106", "IL107",
    "IL201", "IL202", "IL203", "IL204", "IL205", "IL206",
    "IL301", "IL302", "IL303",
)
ALL = frozenset(CODES)
SEED = 0

Builder = Callable[[], "tuple[Any, Any]"]  # () -> (model, example_inputs)


@dataclass(frozen=True)
class Case:
    """One model of the suite and what initlint must say about it."""

    name: str  # "IL201/torch-add/defective", "zoo/gpt2"
    build: Builder
    must: frozenset[str]
    must_not: frozenset[str]
    rule: str | None = None  # the rule a pair is written for; None in the zoo
    style: str = ""
    fixed: bool = True  # the healthy side of a pair, or a zoo model
    fast: bool = False  # part of the subset the test suite runs (tests/bench): the pairs and the fx replicas

    @property
    def group(self) -> str:
        return self.rule or "zoo"


def seeded(fn: Callable[[], Any]) -> Builder:
    """A builder that seeds torch first: the same weights and inputs on every run."""

    @functools.wraps(fn)
    def build():
        torch.manual_seed(SEED)
        return fn()

    return build


def pair(rule: str, style: str, defective: Callable, fixed: Callable, *, may: Iterable[str] = (),
         fixed_may: Iterable[str] = (), fast: bool = True) -> tuple[Case, Case]:
    """A defective model that must get ``rule`` and its fix that must get nothing.

    ``may``: other codes the defect itself may raise (not scored on the defective side). ``fixed_may``: codes
    not scored on the fixed side, for a fix that is only about ``rule`` (kept rare; each use is commented).
    ``fast``: in the subset the test suite runs; pairs are, but for the few that take a second to capture.
    """
    may, fixed_may = frozenset(may), frozenset(fixed_may)
    return (
        Case(f"{rule}/{style}/defective", seeded(defective), frozenset({rule}), ALL - {rule} - may, rule, style,
             fixed=False, fast=fast),
        Case(f"{rule}/{style}/fixed", seeded(fixed), frozenset(), ALL - fixed_may, rule, style, fast=fast),
    )


def healthy(name: str, build: Builder, *, must: Iterable[str] = (), may: Iterable[str] = (),
            fast: bool = False) -> Case:
    """A zoo model: nothing reported at warning level but the true findings in ``must``."""
    must, may = frozenset(must), frozenset(may)
    return Case(f"zoo/{name}", build, must, ALL - must - may, None, "zoo", fixed=not must, fast=fast)


def _collect() -> tuple[Case, ...]:
    from . import attention, numerics, streams, weights, zoo

    cases = [c for mod in (weights, streams, attention, numerics) for c in mod.CASES] + list(zoo.CASES)
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"duplicate case names: {sorted(dupes)}")
    return tuple(cases)


CASES: tuple[Case, ...] = _collect()
FAST: tuple[Case, ...] = tuple(c for c in CASES if c.fast)

__all__ = ["ALL", "CASES", "CODES", "FAST", "Case", "healthy", "pair", "seeded"]
