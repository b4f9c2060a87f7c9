"""Suppressions, applied after the rules ran: comments on the line a finding points to, per-file ignores, and
the baseline of findings an existing code base already had.

* ``# noqa: IL201`` (several codes: ``# noqa: IL201, IL102``; every code: a bare ``# noqa``) and
  ``# initlint: ignore[IL201]`` (codes, prefixes or rule names; every rule: ``# initlint: ignore``) on the
  source line of ``finding.location``. Each file is read once.
* ``per-file-ignores``: globs, relative to the project root, mapped to rule selectors.
* a baseline file: findings keyed by target, code, file and op (not line or message, which move and change
  with unrelated edits), with counts; a finding is new when its key occurs more often than the baseline says.

>>> noqa_codes("y = x + self.f(x)  # noqa: IL201, IL102")
frozenset({'IL102', 'IL201'})
>>> noqa_codes("y = x  # initlint: ignore") == ALL
True
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import relative_to_root
from .errors import ConfigError
from .findings import Finding
from .report import Report

ALL = frozenset({"ALL"})
_NOQA = re.compile(r"#\s*noqa(?::\s*(?P<codes>[A-Z]+[0-9]+(?:[\s,]+[A-Z]+[0-9]+)*))?", re.I)
_IGNORE = re.compile(r"#\s*initlint:\s*ignore(?:\[(?P<keys>[^\]]*)\])?")
BASELINE_VERSION = 1


class Reason(enum.Enum):
    NOQA = "noqa"
    PER_FILE = "per-file-ignores"
    BASELINE = "baseline"


@dataclass(frozen=True)
class Suppressed:
    finding: Finding
    target: str
    reason: Reason


@dataclass(frozen=True)
class Outcome:
    report: Report  # the findings still reported
    suppressed: tuple[Suppressed, ...] = ()

    def count(self, reason: Reason) -> int:
        return sum(1 for s in self.suppressed if s.reason is reason)


def noqa_codes(line: str) -> frozenset[str]:
    """The selectors a source line's suppression comments name; :data:`ALL` for a blanket one."""
    found: set[str] = set()
    for match in _NOQA.finditer(line):
        if match.group("codes") is None:
            return ALL
        found.update(c.upper() for c in re.split(r"[\s,]+", match.group("codes")) if c)
    for match in _IGNORE.finditer(line):
        keys = match.group("keys")
        if keys is None or not keys.strip():
            return ALL
        found.update(k.strip() for k in keys.split(",") if k.strip())
    return frozenset(found)


def selected(f: Finding, selector: str) -> bool:
    """A selector is a code, a code prefix, ``ALL`` or a rule name, as in ``select``/``ignore``."""
    s = selector.strip()
    return s == "ALL" or s == f.name or (s.upper().startswith("IL") and f.code.startswith(s.upper()))


class _Sources:
    """Source lines, each file read once; unreadable files have no lines (and so no comments)."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}

    def line(self, path: str, number: int) -> str:
        if path not in self._lines:
            try:
                self._lines[path] = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                self._lines[path] = []
        lines = self._lines[path]
        return lines[number - 1] if 0 < number <= len(lines) else ""


# -- the baseline ------------------------------------------------------------------------------------------


def baseline_key(target: str, f: Finding, root: Path) -> tuple[str, str, str, str]:
    file = relative_to_root(f.location.file, root) if f.location else ""
    return (target, f.code, file, f.op or f.module)


def read_baseline(path: Path) -> Counter:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"baseline file `{path}` does not exist",
                          help="create it with `initlint --update-baseline --baseline FILE`") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read baseline file `{path}`", why=str(exc),
                          help="regenerate it with `initlint --update-baseline --baseline FILE`") from None
    if not isinstance(data, dict) or data.get("initlint-baseline") != BASELINE_VERSION:
        raise ConfigError(f"`{path}` is not an initlint baseline (version {BASELINE_VERSION})",
                          help="regenerate it with `initlint --update-baseline --baseline FILE`")
    counts: Counter = Counter()
    try:
        for e in data["findings"]:
            counts[(e["target"], e["code"], e["file"], e["op"])] += int(e.get("count", 1))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"baseline file `{path}` has a malformed entry", why=f"{type(exc).__name__}: {exc}",
                          help="regenerate it with `initlint --update-baseline --baseline FILE`") from None
    return counts


def write_baseline(path: Path, report: Report, root: Path) -> int:
    """Write every finding of ``report`` as the new baseline; the number of findings written."""
    counts = Counter(baseline_key(t.target, f, root) for t in report.targets for f in t.findings)
    entries = [{"target": t, "code": c, "file": file, "op": op, "count": n}
               for (t, c, file, op), n in sorted(counts.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"initlint-baseline": BASELINE_VERSION, "findings": entries}, indent=2) + "\n",
                    encoding="utf-8")
    return sum(counts.values())


# -- applying ----------------------------------------------------------------------------------------------


def apply(
    report: Report,
    *,
    root: Path,
    per_file_ignores: Sequence[tuple[str, Sequence[str]]] = (),
    baseline: Counter | None = None,
) -> Outcome:
    """Drop suppressed findings from ``report``: comments first, then per-file ignores, then the baseline."""
    sources = _Sources()
    remaining = Counter(baseline or {})
    suppressed: list[Suppressed] = []
    targets = []
    for t in report.targets:
        kept = []
        for f in t.findings:
            reason = _comment_or_file(f, sources, root, per_file_ignores)
            if reason is None and baseline is not None:
                key = baseline_key(t.target, f, root)
                if remaining[key] > 0:
                    remaining[key] -= 1
                    reason = Reason.BASELINE
            if reason is None:
                kept.append(f)
            else:
                suppressed.append(Suppressed(f, t.target, reason))
        targets.append(dataclasses.replace(t, findings=tuple(kept)))
    return Outcome(Report(tuple(targets)), tuple(suppressed))


def _comment_or_file(f: Finding, sources: _Sources, root: Path,
                     per_file_ignores: Iterable[tuple[str, Sequence[str]]]) -> Reason | None:
    if f.location is None:
        return None
    codes = noqa_codes(sources.line(f.location.file, f.location.line))
    if codes and any(selected(f, c) for c in codes):
        return Reason.NOQA
    rel = relative_to_root(f.location.file, root)
    for glob, selectors in per_file_ignores:
        if _glob_matches(glob, rel) and any(selected(f, s) for s in selectors):
            return Reason.PER_FILE
    return None


def _glob_matches(glob: str, rel: str) -> bool:
    """``*`` crosses folders (``legacy/*`` matches ``legacy/a/b.py``); a glob without ``/`` also matches the
    file name alone, as in ruff and flake8."""
    pattern = glob.removeprefix("./")
    if fnmatch.fnmatchcase(rel, pattern):
        return True
    return "/" not in pattern and fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)
