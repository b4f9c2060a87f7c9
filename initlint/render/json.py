"""``--format json``: ``Report.to_dict()``, pretty-printed."""

from __future__ import annotations

import json

from ..report import Report


def render(report: Report, options) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"
