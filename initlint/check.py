"""Running rules over a graph: iteration, error wrapping and record building, once for every rule."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from .findings import Finding, Issue
from .graph import ModelGraph
from .ops import Op
from .registry import Rule


@dataclass(frozen=True)
class RuleFailure:
    """A rule raised: a bug in that rule, reported as one, while the other rules still run."""

    code: str
    op: str | None
    error: str


def check(graph: ModelGraph, rules: Sequence[Rule]) -> tuple[list[Finding], list[RuleFailure]]:
    findings: list[Finding] = []
    failures: list[RuleFailure] = []
    applicable: dict[frozenset, list[Op]] = {}  # the ops of each kind set, in graph order: rules share sets
    for r in rules:
        if r.applies_to is None:
            calls: Iterable[tuple[Op | None, tuple]] = [(None, (graph,))]
        else:
            ops = applicable.get(r.applies_to)
            if ops is None:
                ops = applicable[r.applies_to] = [op for op in graph if op.kind in r.applies_to]
            calls = ((op, (op, graph)) for op in ops)
        for op, args in calls:
            try:
                result = r.check(*args)
            except Exception as exc:  # a bug in the rule: report it, keep going
                failures.append(RuleFailure(r.code, op.name if op else None, f"{type(exc).__name__}: {exc}"))
                continue
            for issue in _issues(result):
                findings.append(_finding(r, issue, op, graph))
    findings = merge_repeats(findings, graph)
    findings.sort(key=lambda f: f.sort_key)
    return findings, failures


def merge_repeats(findings: list[Finding], graph: ModelGraph) -> list[Finding]:
    """One finding per defect in the source: the same rule at the same line with the same fix, reached once
    per iteration of a loop (`for layer in self.layers: x = x * mask`), is reported once, at its first op,
    with the count. Findings whose fixes differ (each names its own parameter) stay apart."""
    groups: dict[tuple, list[Finding]] = {}
    for f in findings:
        loc = f.location
        key = (f.code, loc.file, loc.line, f.fix.code if f.fix else None) if loc is not None else (id(f),)
        groups.setdefault(key, []).append(f)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        group.sort(key=lambda f: (-f.severity.rank, graph.position(f.op) if f.op in graph.ops else 0))
        first, rest = group[0], group[1:]
        by_module = len({f.module for f in group}) == len(group)  # one instance per block: name the blocks
        names = ", ".join(f"`{f.module if by_module else f.op}`" for f in rest[:3])
        names += f" and {len(rest) - 3} more" if len(rest) > 3 else ""
        merged.append(replace(
            first,
            message=f"{first.message} (this line runs {len(group)} times: also {'in ' if by_module else ''}{names})",
            predicted={**first.predicted, "repeats": len(group)},
        ))
    return merged


def _issues(result) -> list[Issue]:
    if result is None:
        return []
    if isinstance(result, Issue):
        return [result]
    return [i for i in result if i is not None]


def _finding(r: Rule, issue: Issue, op: Op | None, graph: ModelGraph) -> Finding:
    at = graph.op(issue.op) if issue.op is not None else op
    return Finding(
        code=r.code,
        name=r.name,
        severity=issue.severity or r.severity,
        message=issue.message,
        op=at.name if at else None,
        module=at.module if at else "",
        location=at.where if at else None,
        fix=issue.fix,
        predicted=dict(issue.predicted),
    )
