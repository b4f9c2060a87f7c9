"""Rules: the ``@rule`` decorator, the :class:`Rule` record, discovery through entry points, selection.

A rule is a function over the typed graph. Declared with ``applies_to``, it is called once per op of those
kinds as ``fn(op, graph)``; without, once per graph as ``fn(graph)``. It returns ``None``, an
:class:`~initlint.findings.Issue`, or an iterable of them.

>>> from initlint.ops import OpKind
>>> @rule("IL999", "always-quiet", applies_to={OpKind.ADD})
... def always_quiet(op, graph):
...     '''
...     ## What it does
...     Never finds anything. Used in examples.
...     '''
>>> always_quiet.code, always_quiet.summary
('IL999', 'Never finds anything.')
"""

from __future__ import annotations

import functools
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata

from .errors import UsageError
from .findings import Severity
from .ops import OpKind

ENTRY_POINT_GROUP = "initlint.rules"
SECTIONS = ("What it does", "Why is this bad?", "Example", "Use instead", "References")
_CODE = re.compile(r"^IL\d{3}$")
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    check: Callable = field(repr=False)
    applies_to: frozenset[OpKind] | None = None  # None: called once per graph
    severity: Severity = Severity.WARNING  # default; an Issue may override it
    needs_signals: bool = False  # uses the variance engine's predictions
    doc: str = field(default="", repr=False)
    probe: object = field(default=None, repr=False, compare=False)  # an initlint.probes.Probe (third-party rules)
    needs_weights: bool = True  # reads weight values (False: works from the structure alone, on `meta` too)

    def __call__(self, *args):
        return self.check(*args)

    @property
    def sections(self) -> dict[str, str]:
        """The docstring's ``## Heading`` sections, by heading."""
        parts = re.split(r"^## +(.+?)\s*$", self.doc, flags=re.M)
        return {parts[i].strip(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}

    @property
    def summary(self) -> str:
        """The first sentence of "What it does", for listings."""
        text = " ".join(self.sections.get("What it does", "").split())
        match = re.match(r"(.+?[.!?])(?=\s+[A-Z`(]|$)", text)  # a sentence ends before a capital, not at "..."
        return match.group(1) if match else text

    def code_blocks(self, section: str) -> list[str]:
        body = self.sections.get(section, "")
        return [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", body, flags=re.S)]


def rule(
    code: str,
    name: str,
    *,
    applies_to: Iterable[OpKind] | None = None,
    severity: Severity = Severity.WARNING,
    needs_signals: bool = False,
    probe: object = None,
    needs_weights: bool = True,
) -> Callable[[Callable], Rule]:
    """Declare a rule. The decorated function's docstring is its user documentation. ``probe``: an
    :class:`initlint.probes.Probe` confirming its findings under ``--probe`` (built-in rules' are in
    ``initlint.probes.PROBES``)."""
    if not _CODE.match(code):
        raise ValueError(f"rule code `{code}` must be IL followed by three digits")
    if not _NAME.match(name):
        raise ValueError(f"rule name `{name}` must be kebab-case")

    def wrap(fn: Callable) -> Rule:
        kinds = frozenset(applies_to) if applies_to is not None else None
        doc = textwrap.dedent(fn.__doc__ or "").strip()
        return Rule(code, name, fn, kinds, severity, needs_signals, doc, probe, needs_weights)

    return wrap


# -- discovery ---------------------------------------------------------------------------------------------


def _as_rules(obj, source: str) -> list[Rule]:
    items = obj if isinstance(obj, (list, tuple)) else [obj]
    bad = [x for x in items if not isinstance(x, Rule)]
    if bad:
        raise UsageError(
            f"entry point `{source}` in group `{ENTRY_POINT_GROUP}` does not give rules",
            why=f"got {type(bad[0]).__name__}",
            help="an entry point must name a @rule function or a sequence of them",
        )
    return list(items)


def discover() -> tuple[Rule, ...]:
    """Every installed rule, built-in first, then third-party, each code once, sorted by code.

    Entry points are read once per ``sys.path``: scanning every installed distribution's metadata costs more
    than linting a small model, and ``lint()`` discovers on each call. A plugin installed into a directory
    already on the path while the process runs is seen by the next process.
    """
    return _discover(tuple(sys.path))


@functools.lru_cache(maxsize=4)
def _discover(path: tuple[str, ...]) -> tuple[Rule, ...]:
    found: dict[str, Rule] = {}
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    names = {ep.name for ep in eps}
    if "builtin" not in names:  # running from a checkout without installed metadata
        from . import rules as builtin

        for r in builtin.BUILTIN_RULES:
            found[r.code] = r
    for ep in sorted(eps, key=lambda e: (e.name != "builtin", e.name)):
        for r in _as_rules(ep.load(), f"{ep.name} = {ep.value}"):
            other = found.get(r.code)
            if other is not None and other is not r:
                raise UsageError(
                    f"two rules claim code {r.code}",
                    why=f"`{other.name}` and `{r.name}` (from entry point `{ep.name}`)",
                    help="uninstall one of the plugins or ask its author to pick another code",
                )
            found[r.code] = r
    return tuple(sorted(found.values(), key=lambda r: r.code))


def matches(r: Rule, selector: str) -> bool:
    """A selector is a code (``IL201``), a code prefix (``IL2``, ``IL``), ``ALL``, or a rule name."""
    s = selector.strip()
    return s == "ALL" or s == r.name or (s.upper().startswith("IL") and r.code.startswith(s.upper()))


def select(
    rules: Sequence[Rule], select: Sequence[str] | None = None, ignore: Sequence[str] = ()
) -> tuple[Rule, ...]:
    """Filter ``rules`` ruff-style; an unknown selector is a usage error."""
    for s in [*(select or ()), *ignore]:
        if not any(matches(r, s) for r in rules):
            raise UsageError(
                f"unknown rule selector `{s}`",
                why="no installed rule has that code, code prefix or name",
                help="run `initlint rules` to list them",
            )
    chosen = [r for r in rules if select is None or any(matches(r, s) for s in select)]
    return tuple(r for r in chosen if not any(matches(r, s) for s in ignore))


def find(rules: Sequence[Rule], key: str) -> Rule:
    for r in rules:
        if key.upper() == r.code or key == r.name:
            return r
    raise UsageError(f"no rule `{key}`", help="run `initlint rules` to list them")
