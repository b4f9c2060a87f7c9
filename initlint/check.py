"""Running rules over a graph: iteration, error wrapping and record building, once for every rule."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
    for r in rules:
        if r.applies_to is None:
            calls: Iterable[tuple[Op | None, tuple]] = [(None, (graph,))]
        else:
            calls = ((op, (op, graph)) for op in graph if op.kind in r.applies_to)
        for op, args in calls:
            try:
                result = r.check(*args)
            except Exception as exc:  # a bug in the rule: report it, keep going
                failures.append(RuleFailure(r.code, op.name if op else None, f"{type(exc).__name__}: {exc}"))
                continue
            for issue in _issues(result):
                findings.append(_finding(r, issue, op, graph))
    findings.sort(key=lambda f: f.sort_key)
    return findings, failures


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
