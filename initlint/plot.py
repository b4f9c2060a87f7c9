"""``--plot PATH``: a signal-propagation plot in the style of Brock et al. (2021), per op or per block.

Two panels share the x axis (the model's ops in order, or the output of each block when the model is long):
the forward second moment ``E[x^2]`` of the activations and the backward one of the gradients, each predicted
by the variance engine (dashed) and measured by one forward and backward pass (solid), on a log scale.
float16's limits are drawn as the second moments of its largest finite and smallest normal values, and each
finding is marked at its op with its code.

matplotlib is an optional extra, ``pip install 'initlint[plot]'``; without it ``--plot`` is a usage error.
The figure is written with matplotlib's object API (no pyplot, no global state); the format follows the
extension: ``.png`` or ``.svg``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from .errors import UsageError

FORMATS = (".png", ".svg")
MAX_POINTS = 120  # beyond this many ops the plot shows the last op of each block at a depth that fits
FP16_MAX = 65504.0
FP16_TINY = 2.0**-14


def check_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed: pip install 'initlint[plot]'") from None


def _points(rows: Sequence) -> list:
    """The rows to draw: every op, or the last op of each module run at the shallowest depth that fits."""
    if len(rows) <= MAX_POINTS:
        return list(rows)
    depth = max((r.module.count(".") + 1 for r in rows if r.module), default=1)
    chosen = None
    for d in range(1, depth + 1):  # the deepest level whose blocks still fit
        keys = [".".join(r.module.split(".")[:d]) for r in rows]
        last = [r for i, r in enumerate(rows) if i + 1 == len(rows) or keys[i + 1] != keys[i]]
        if len(last) > MAX_POINTS:
            break
        chosen = last
    return chosen if chosen is not None else list(rows)[:: math.ceil(len(rows) / MAX_POINTS)]


def figure(graph, measured, findings: Sequence = (), title: str = ""):
    """A matplotlib Figure with the forward and backward panels."""
    check_available()
    from matplotlib.figure import Figure

    from .signals import compare

    rows = _points(compare(graph, measured))
    x = list(range(len(rows)))
    fig = Figure(figsize=(max(8.0, min(24.0, 0.12 * len(rows) + 6)), 7.5), constrained_layout=True)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, side, label in ((axes[0], "forward", "activations E[x²]"), (axes[1], "backward", "gradients E[g²]")):
        for source, style, color in (("predicted", "--", "tab:blue"), ("measured", "-", "tab:green")):
            ys = [getattr(getattr(r, side), source) for r in rows]
            ys = [y if y is not None and y > 0 and math.isfinite(y) else math.nan for y in ys]
            ax.plot(x, ys, style, color=color, marker="o" if source == "measured" else None, markersize=3,
                    label=source)
        ax.axhline(FP16_MAX**2, color="tab:red", lw=0.8, ls=":", label="float16 max²")
        ax.axhline(FP16_TINY**2, color="tab:purple", lw=0.8, ls=":", label="float16 smallest normal²")
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    index = {r.op: i for i, r in enumerate(rows)}
    order = {name: i for i, name in enumerate(graph.ops)}
    for f in findings:
        at = _position(f.op, rows, index, order)
        if at is None:
            continue
        for ax in axes:
            ax.axvline(at, color="tab:orange", lw=1.0, alpha=0.7)
        axes[0].annotate(f.code, (at, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top",
                         ha="right", fontsize=8, color="tab:orange")
    axes[1].set_xticks(x)
    axes[1].set_xticklabels([f"{r.module or r.op} ({r.kind.value})" for r in rows], rotation=90, fontsize=6)
    axes[0].legend(fontsize=7, loc="best")
    axes[0].set_title(title or graph.model_name)
    return fig


def _position(op: str | None, rows, index, order) -> int | None:
    if op is None:
        return None
    if op in index:
        return index[op]
    at = order.get(op)
    if at is None:
        return None
    later = [i for i, r in enumerate(rows) if order.get(r.op, -1) >= at]
    return later[0] if later else None


def write(fig, path: str) -> None:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise UsageError(f"--plot {path}: unknown image format `{ext or '(none)'}`", help="use a .png or .svg path")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format=ext[1:], dpi=150)


def plot_report(report, path: str) -> list[str]:
    """One figure per linted target (``name-<i>.ext`` when there are several); the paths written."""
    done = [t for t in report.targets if t.error is None and t.graph is not None and t.measured is not None]
    stem, ext = os.path.splitext(path)
    if ext.lower() not in FORMATS:
        raise UsageError(f"--plot {path}: unknown image format `{ext or '(none)'}`", help="use a .png or .svg path")
    written = []
    for i, t in enumerate(done):
        out = path if len(done) == 1 else f"{stem}-{i + 1}{ext}"
        write(figure(t.graph, t.measured, t.findings, title=f"{t.target} ({t.model})"), out)
        written.append(out)
    return written


__all__ = ["figure", "write", "plot_report", "check_available", "FORMATS"]
