"""Renderers: one module per output format, each a function ``render(report, options) -> str``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..findings import Severity

if TYPE_CHECKING:  # the CLI builds its parser from FORMATS before torch is imported
    from ..report import Report


@dataclass(frozen=True)
class RenderOptions:
    color: bool = False
    verbose: bool = False
    fail_level: Severity = Severity.WARNING
    show_fixes: bool = True
    width: int | None = None  # the terminal's columns when writing to one; formats that wrap use it


def _text(report: Report, options: RenderOptions) -> str:
    from .text import render

    return render(report, options)


def _json(report: Report, options: RenderOptions) -> str:
    from .json import render

    return render(report, options)


def _lazy(module: str) -> Callable[[Report, RenderOptions], str]:
    """A format whose module is imported when it is used."""

    def run(report: Report, options: RenderOptions) -> str:
        from importlib import import_module

        return import_module(f"{__name__}.{module}").render(report, options)

    return run


FORMATS: dict[str, Callable[[Report, RenderOptions], str]] = {
    "text": _text, "json": _json, "concise": _lazy("concise"), "sarif": _lazy("sarif"),
    "github": _lazy("github"), "junit": _lazy("junit"),
}


def render(report: Report, fmt: str, options: RenderOptions) -> str:
    return FORMATS[fmt](report, options)
