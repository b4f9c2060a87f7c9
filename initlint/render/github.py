"""``--format github``: GitHub Actions workflow commands, which annotate the lines in a pull request's diff.

    ::warning file=models.py,line=12,title=initlint IL201 (unscaled-residual)::IL201 `blocks.0` adds ...

``error`` and ``warning`` findings become annotations of that level, ``info`` ones ``notice``. Values are
escaped as the Actions runner unescapes them (``%``, CR and LF everywhere; ``:`` and ``,`` in properties).

>>> _data("50% of\\nrows")
'50%25 of%0Arows'
>>> _prop("a,b:c")
'a%2Cb%3Ac'
"""

from __future__ import annotations

from pathlib import PurePath

from ..findings import Severity
from ..report import Report

LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def render(report: Report, options) -> str:
    out: list[str] = []
    for t in report.targets:
        for f in t.findings:
            props = []
            if f.location is not None:
                props += [f"file={_prop(PurePath(f.location.file).as_posix())}", f"line={f.location.line}"]
            props.append(f"title={_prop(f'initlint {f.code} ({f.name})')}")
            text = f"{f.code} {f.message}" + ("" if f.location else f" (in {t.target})")
            if f.fix is not None:
                text += f"\nhelp: {f.fix.summary}"
            out.append(f"::{LEVELS[f.severity]} {','.join(props)}::{_data(text)}")
    for t in report.targets:
        if t.error is not None:
            text = f"{t.target}: {t.error.message}" + (f"\nhelp: {t.error.help}" if t.error.help else "")
            out.append(f"::error title={_prop('initlint: target not linted')}::{_data(text)}")
    return "\n".join(out) + "\n" if out else ""
