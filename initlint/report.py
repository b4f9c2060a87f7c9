"""The report: what was linted, how it was captured, what was found. ``to_dict`` is the JSON schema."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .errors import ErrorKind
from .findings import Finding, Severity
from .graph import ModelGraph, Signal
from .signals import compare


@dataclass(frozen=True)
class TargetError:
    kind: ErrorKind
    message: str
    help: str = ""


@dataclass(frozen=True)
class TargetReport:
    target: str
    model: str | None = None
    capture: str | None = None
    ops: int = 0
    unknown: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    error: TargetError | None = None
    graph: ModelGraph | None = field(default=None, repr=False, compare=False)
    exception: BaseException | None = field(default=None, repr=False, compare=False)  # for --verbose
    measured: Mapping[str, Signal] | None = field(default=None, repr=False, compare=False)  # --signals
    skipped: tuple[str, ...] = ()  # rules not run: they read weight values, and the model has none (meta)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "model": self.model,
            "capture": self.capture,
            "coverage": {"ops": self.ops, "unknown": list(self.unknown)},
            "notes": list(self.notes),
            "skipped": list(self.skipped),
            "error": None if self.error is None else
            {"kind": self.error.kind.value, "message": self.error.message, "help": self.error.help},
            "findings": [finding_dict(f) for f in self.findings],
            **({"signals": [r.to_dict() for r in compare(self.graph, self.measured)]}
               if self.measured is not None and self.graph is not None else {}),
        }


def finding_dict(f: Finding) -> dict[str, Any]:
    return {
        "code": f.code,
        "name": f.name,
        "severity": f.severity.value,
        "message": f.message,
        "module": f.module,
        "op": f.op,
        "location": None if f.location is None else {"file": f.location.file, "line": f.location.line},
        "fix": None if f.fix is None else {"summary": f.fix.summary, "code": f.fix.code},
        "predicted": {k: _jsonable(v) for k, v in f.predicted.items()},
        "probe": {"status": "skipped"} if f.probe is None else {
            "status": f.probe.status.value,
            "measured": {k: _jsonable(v) for k, v in f.probe.measured.items()},
            "detail": f.probe.detail,
            "fix_verified": f.probe.fix_verified,
            "after_fix": {k: _jsonable(v) for k, v in f.probe.after_fix.items()},
        },
    }


def _jsonable(v):
    if isinstance(v, float):
        return v if v == v and abs(v) != float("inf") else str(v)
    if isinstance(v, (int, str, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


@dataclass(frozen=True)
class Report:
    targets: tuple[TargetReport, ...]

    @property
    def findings(self) -> list[Finding]:
        return [f for t in self.targets for f in t.findings]

    @property
    def errors(self) -> list[TargetReport]:
        return [t for t in self.targets if t.error is not None]

    def exit_code(self, fail_level: Severity = Severity.WARNING) -> int:
        """2 if a target errored, 1 if a finding is at or above ``fail_level``, else 0."""
        if self.errors:
            return 2
        return 1 if any(f.severity.rank >= fail_level.rank for f in self.findings) else 0

    def to_dict(self) -> dict[str, Any]:
        return {"initlint": __version__, "targets": [t.to_dict() for t in self.targets]}
