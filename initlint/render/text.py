"""``--format text``: ruff-style lines, ``path:line: CODE [severity] message``, then ``help:`` with the fix."""

from __future__ import annotations

from collections import Counter

from ..errors import ErrorKind
from ..findings import Finding, Severity
from ..report import Report, TargetReport

_COLORS = {"error": "\033[1;31m", "warning": "\033[1;33m", "info": "\033[1;36m", "bold": "\033[1m",
           "dim": "\033[2m", "code": "\033[1;31m", "reset": "\033[0m"}


class _Style:
    def __init__(self, color: bool):
        self.color = color

    def __call__(self, key: str, text: str) -> str:
        return f"{_COLORS[key]}{text}{_COLORS['reset']}" if self.color else text


def finding_lines(f: Finding, target: TargetReport, style: _Style, show_fix: bool = True) -> list[str]:
    where = str(f.location) if f.location else target.target
    scope = f" [{f.module}]" if f.module else ""
    head = (f"{style('bold', where)}: {style('code', f.code)} {style(f.severity.value, f'[{f.severity.value}]')} "
            f"{f.message}{style('dim', scope)}")
    lines = [head]
    if f.probe is not None:
        measured = ", ".join(f"{k}={_num(v)}" for k, v in f.probe.measured.items())
        verified = "" if f.probe.fix_verified is None else (
            "; fix verified" if f.probe.fix_verified else "; fix NOT verified")
        lines.append(f"  probe: {f.probe.status.value}" + (f" ({measured})" if measured else "") + verified)
    if show_fix and f.fix is not None:
        lines.append(f"  {style('bold', 'help')}: {f.fix.summary}")
        for code_line in f.fix.code.splitlines():
            lines.append(f"    | {code_line}")
    return lines


def _num(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def error_lines(t: TargetReport, style: _Style) -> list[str]:
    err = t.error
    label = "error" if err.kind is not ErrorKind.INTERNAL else "internal error"
    lines = [f"{style('error', label)}: {t.target}: {err.message}"]
    if err.help:
        lines.append(f"  {style('bold', 'help')}: {err.help}")
    return lines


def errors(report: Report, options) -> str:
    """The targets that could not be linted, for stderr; with tracebacks when verbose."""
    style = _Style(options.color)
    out: list[str] = []
    for t in report.targets:
        if t.error is not None:
            out.extend(error_lines(t, style))
            if options.verbose and t.exception is not None:
                import traceback

                out.extend("".join(traceback.format_exception(t.exception)).rstrip().splitlines())
    return "\n".join(out) + "\n" if out else ""


def render(report: Report, options) -> str:
    """Findings and the summary; errors go to stderr (:func:`errors`)."""
    style = _Style(options.color)
    out: list[str] = []
    for t in report.targets:
        for f in t.findings:
            out.extend(finding_lines(f, t, style, options.show_fixes))
            out.append("")
    for t in report.targets:
        if t.skipped:
            out.append(f"note: {t.target}: `{t.model}` has no weight values (meta device): {len(t.skipped)} rules "
                       f"that read weights were skipped ({', '.join(t.skipped)})")
    if options.verbose:
        for t in report.targets:
            if t.capture:
                unknown = f", unknown: {', '.join(t.unknown)}" if t.unknown else ""
                out.append(f"{t.target}: captured `{t.model}` with {t.capture}: {t.ops} ops{unknown}")
                out.extend(f"  note: {n}" for n in t.notes)
    out.append(summary(report))
    return "\n".join(out) + "\n"


def summary(report: Report) -> str:
    findings = report.findings
    linted = [t for t in report.targets if t.error is None]
    n_targets = f"{len(linted)} model{'s' if len(linted) != 1 else ''}"
    if not findings and not linted:
        text = ""
    elif not findings:
        text = f"All checks passed on {n_targets}."
    else:
        counts = Counter(f.severity for f in findings)
        parts = [f"{counts[s]} {s.value}{'s' if counts[s] != 1 else ''}" for s in
                 (Severity.ERROR, Severity.WARNING, Severity.INFO) if counts[s]]
        text = f"Found {len(findings)} finding{'s' if len(findings) != 1 else ''} ({', '.join(parts)}) in {n_targets}."
    if report.errors:
        n = len(report.errors)
        text += f" {n} target{'s' if n != 1 else ''} could not be linted."
    return text.strip()
