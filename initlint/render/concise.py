"""``--format concise``: one line per finding, ``path:line: CODE message``, then the summary.

Targets that could not be linted go to stderr, as with ``text``. Made for narrow terminals and editors' quickfix lists: no fixes, no probe details. When the terminal's width
is known, a long message wraps under itself with a four-space indent, so every finding starts at column 0.
"""

from __future__ import annotations

import textwrap

from ..report import Report
from .text import _Style, summary

INDENT = "    "


def render(report: Report, options) -> str:
    style = _Style(options.color)
    out: list[str] = []
    for t in report.targets:
        for f in t.findings:
            where = str(f.location) if f.location else t.target
            out.extend(_line(where, f.code, f.message, options.width, style, f.severity.value))
    out.append(summary(report))
    return "\n".join(out) + "\n"


def _line(where: str, code: str, message: str, width: int | None, style: _Style, level: str) -> list[str]:
    head = f"{where}: {code} "
    if not width or len(head) + len(message) <= width:
        lines = [head + message]
    else:
        lines = textwrap.wrap(head + message, width=max(width, 20), subsequent_indent=INDENT,
                              break_long_words=False, break_on_hyphens=False)
    if lines[0].startswith(head):  # a path wider than the terminal keeps its line, uncolored
        lines[0] = f"{style('bold', where)}: {style(level, code)} " + lines[0][len(head):]
    return lines
