"""Renderers: one module per output format, each a function ``render(report, options) -> str``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..findings import Severity
from ..report import Report


@dataclass(frozen=True)
class RenderOptions:
    color: bool = False
    verbose: bool = False
    fail_level: Severity = Severity.WARNING
    show_fixes: bool = True


def _text(report: Report, options: RenderOptions) -> str:
    from .text import render

    return render(report, options)


def _json(report: Report, options: RenderOptions) -> str:
    from .json import render

    return render(report, options)


FORMATS: dict[str, Callable[[Report, RenderOptions], str]] = {"text": _text, "json": _json}


def render(report: Report, fmt: str, options: RenderOptions) -> str:
    return FORMATS[fmt](report, options)
