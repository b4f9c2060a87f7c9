"""``--signals`` as text: predicted against measured second moments, per op or, for long models, per block.

A block is the module path up to its first index (``h.0``, ``encoder.block.3``, ``layers.11``); its row shows
the block's last op (what the block hands on) and the worst ratio inside it.

>>> from initlint.ops import OpKind
>>> from initlint.signals import Pair, Row
>>> print(table([Row("fc", "fc", OpKind.LINEAR, Pair(1.0, 0.8), Pair(0.5, 0.5))]))
op  kind    forward  measured  ratio  backward  measured  ratio
fc  linear    1.000     0.800  1.25      0.500     0.500  1.00
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..report import Report
from ..signals import Pair, Row, compare

COLLAPSE_ABOVE = 60  # ops; longer models are shown one row per block
TOLERANCE = 1.5  # a ratio within [1/1.5, 1.5] counts as agreement (the accuracy benchmark's criterion)


def render(report: Report, options=None) -> str:
    parts = []
    for t in report.targets:
        if t.error is not None or t.graph is None or t.measured is None:
            continue
        rows = compare(t.graph, t.measured)
        head = (f"\n{t.target}: predicted vs measured second moments ({len(rows)} ops; training mode; "
                "backward: loss sum(y * r), r ~ N(0, 1))\n")
        body = table(rows) if len(rows) <= COLLAPSE_ABOVE else blocks(rows)
        parts.append(head + body + "\n" + summary(rows))
    return "".join(parts)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0 or (1e-3 <= abs(v) < 1e4):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return f"{v:.2e}"


def _ratio(p: Pair) -> str:
    r = p.ratio
    if r is None:
        return "-"
    flag = "" if 1 / TOLERANCE <= r <= TOLERANCE else " *"
    return (f"{r:.2f}" if 1e-2 <= r < 1e3 else f"{r:.1e}") + flag


def _grid(header: Sequence[str], lines: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = []
    for cells in [list(header), *lines]:
        out.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(s.rstrip() for s in out)


def table(rows: Sequence[Row]) -> str:
    lines = [[r.op, r.kind.value, _fmt(r.forward.predicted), _fmt(r.forward.measured), _ratio(r.forward),
              _fmt(r.backward.predicted), _fmt(r.backward.measured), _ratio(r.backward)] for r in rows]
    header = ["op", "kind", "forward", "measured", "ratio", "backward", "measured", "ratio"]
    return _grid(header, lines, {2, 3, 5, 6})


def block_of(module: str) -> str:
    parts = module.split(".") if module else []
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0] if parts else "(root)"


def _worst(rows: Sequence[Row]) -> str:
    logs = [abs(math.log2(p.ratio)) for r in rows for p in (r.forward, r.backward) if p.ratio]
    return f"x{2 ** max(logs):.2f}" if logs else "-"


def blocks(rows: Sequence[Row]) -> str:
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(block_of(r.module), []).append(r)
    lines = []
    for name, members in groups.items():
        last = members[-1]
        lines.append([name, str(len(members)), last.op, _fmt(last.forward.predicted), _fmt(last.forward.measured),
                      _ratio(last.forward), _fmt(last.backward.predicted), _fmt(last.backward.measured),
                      _ratio(last.backward), _worst(members)])
    header = ["block", "ops", "last op", "forward", "measured", "ratio", "backward", "measured", "ratio", "worst"]
    return _grid(header, lines, {1, 3, 4, 6, 7})


def summary(rows: Sequence[Row]) -> str:
    def count(pairs):
        ok = [p for p in pairs if p.ratio is not None]
        return sum(1 / TOLERANCE <= p.ratio <= TOLERANCE for p in ok), len(ok)

    fh, fn = count([r.forward for r in rows])
    bh, bn = count([r.backward for r in rows])
    return f"within x{TOLERANCE:g}: forward {fh}/{fn}, backward {bh}/{bn} (* marks the others)\n"


__all__ = ["render", "table", "blocks", "summary", "block_of"]
