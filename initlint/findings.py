"""What rules say and what the engine makes of it: :class:`Issue` (a rule's words) and :class:`Finding`."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # keeps `initlint --help` and `initlint rules` free of torch
    from .ops import Location


class Severity(enum.Enum):
    """How bad a finding is. ``error``: training is broken or numerically invalid at init; ``warning``: likely
    to hurt; ``info``: off, but made harmless by a normalization downstream or similar."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def parse(cls, text: str) -> "Severity":
        try:
            return cls(text.lower())
        except ValueError:
            raise ValueError(f"unknown severity `{text}` (expected info, warning or error)") from None


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


class ProbeStatus(enum.Enum):
    CONFIRMED = "confirmed"
    NOT_REPRODUCED = "not-reproduced"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Fix:
    """A fix as people read it: an imperative sentence and code to paste, numbers computed for this model."""

    summary: str
    code: str = ""


@dataclass(frozen=True)
class ProbeResult:
    status: ProbeStatus
    measured: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    detail: str = ""
    fix_verified: bool | None = None
    after_fix: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Issue:
    """What a rule returns: only what the rule alone knows. The engine stamps code, name and location.

    ``op`` names the op to point at when it is not the one the rule was called on; ``severity`` overrides the
    rule's default (a defect a normalization absorbs is ``info``).
    """

    message: str
    fix: Fix | None = None
    predicted: Mapping[str, Any] = field(default_factory=dict)
    severity: Severity | None = None
    op: str | None = None


@dataclass(frozen=True)
class Finding:
    code: str
    name: str
    severity: Severity
    message: str
    op: str | None
    module: str
    location: Location | None
    fix: Fix | None = None
    predicted: Mapping[str, Any] = field(default_factory=dict)
    probe: ProbeResult | None = None

    @property
    def sort_key(self) -> tuple:
        loc = self.location
        return (loc.file if loc else "~", loc.line if loc else 0, self.code, self.op or "")
