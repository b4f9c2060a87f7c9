"""``--statistics``: how many findings each rule has, most first, instead of the findings themselves.

As a table for people (any format but json) or, with ``--format json``, a list of
``{"code", "name", "severity", "count"}`` objects.
"""

from __future__ import annotations

import json
from collections import Counter

from ..report import Report
from .text import summary


def rows(report: Report) -> list[dict]:
    counts = Counter((f.code, f.name) for f in report.findings)
    severities = {f.code: f.severity.value for f in report.findings}
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0]))
    return [{"code": code, "name": name, "severity": severities[code], "count": n} for (code, name), n in ordered]


def render(report: Report, fmt: str, options) -> str:
    table = rows(report)
    if fmt == "json":
        return json.dumps(table, indent=2) + "\n"
    width = max((len(str(r["count"])) for r in table), default=1)
    lines = [f"{r['count']:>{width}}  {r['code']}  {r['name']:<32} {r['severity']}".rstrip() for r in table]
    lines.append(summary(report))
    return "\n".join(lines) + "\n"
