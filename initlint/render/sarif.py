"""``--format sarif``: SARIF 2.1.0, for GitHub code scanning and other SARIF viewers.

What GitHub reads (docs.github.com, "SARIF support for code scanning"): ``tool.driver.rules`` with ``id``,
``shortDescription``, ``fullDescription``, ``help`` (text and markdown: the rule's documentation) and
``defaultConfiguration.level``; each result's ``ruleId``, ``level``, ``message.text`` and one
``physicalLocation`` whose ``artifactLocation.uri`` is relative to the repository root (here: relative to the
working directory, resolved through ``%SRCROOT%``) with ``region.startLine``; ``partialFingerprints`` so an
alert is matched across runs even when its line moves. Targets that could not be linted are tool execution
notifications, with ``executionSuccessful`` false.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import quote

from .. import __version__
from ..findings import Finding, Severity
from ..report import Report, TargetReport, finding_dict

SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SRCROOT = "%SRCROOT%"
LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
PROBLEM_SEVERITY = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "recommendation"}
FINGERPRINT = "initlint/v1"


def render(report: Report, options) -> str:
    rules = _rules(sorted({f.code for f in report.findings}))
    index = {r["id"]: i for i, r in enumerate(rules)}
    results = [_result(f, t, index) for t in report.targets for f in t.findings]
    run = {
        "tool": {"driver": {"name": "initlint", "version": __version__, "semanticVersion": __version__,
                            "rules": rules}},
        "originalUriBaseIds": {SRCROOT: {"uri": Path.cwd().resolve().as_uri() + "/"}},
        "invocations": [_invocation(report)],
        "results": results,
    }
    return json.dumps({"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2) + "\n"


def _rules(codes: list[str]) -> list[dict]:
    from ..registry import discover

    known = {r.code: r for r in discover()} if codes else {}
    out = []
    for code in codes:
        r = known.get(code)
        if r is None:  # a finding from a rule no longer installed: still a valid descriptor
            out.append({"id": code, "shortDescription": {"text": code}})
            continue
        what = " ".join(r.sections.get("What it does", r.summary).split())
        out.append({
            "id": r.code,
            "name": r.name,
            "shortDescription": {"text": r.summary or r.name},
            "fullDescription": {"text": what or r.name},
            "help": {"text": r.doc or r.summary, "markdown": r.doc or r.summary},
            "defaultConfiguration": {"level": LEVELS[r.severity]},
            "properties": {"tags": ["initialization", "signal-propagation"], "precision": "high",
                           "problem.severity": PROBLEM_SEVERITY[r.severity]},
        })
    return out


def _result(f: Finding, t: TargetReport, index: dict[str, int]) -> dict:
    text = f.message + (f"\nhelp: {f.fix.summary}" if f.fix is not None else "")
    result = {
        "ruleId": f.code,
        "ruleIndex": index[f.code],
        "level": LEVELS[f.severity],
        "message": {"text": text},
        "partialFingerprints": {FINGERPRINT: _fingerprint(f, t)},
        "properties": {"target": t.target, "model": t.model, "op": f.op, "module": f.module,
                       "predicted": finding_dict(f)["predicted"]},
    }
    location: dict = {}
    if f.location is not None:
        location["physicalLocation"] = {"artifactLocation": _artifact(f.location.file),
                                        "region": {"startLine": max(f.location.line, 1)}}
    if f.module or f.op:
        location["logicalLocations"] = [{"fullyQualifiedName": f.module or f.op, "kind": "module"}]
    if location:
        result["locations"] = [location]
    return result


def _artifact(path: str) -> dict:
    if os.path.isabs(path):
        return {"uri": Path(path).as_uri()}
    return {"uri": quote(Path(path).as_posix()), "uriBaseId": SRCROOT}


def _fingerprint(f: Finding, t: TargetReport) -> str:
    """Stable across runs and line moves: what the baseline keys on (target, code, file, op)."""
    file = Path(f.location.file).as_posix() if f.location else ""
    key = "\0".join((t.target, f.code, file, f.op or f.module))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _invocation(report: Report) -> dict:
    notes = [{"level": "error", "message": {"text": f"{t.target}: {t.error.message}"
                                            + (f" (help: {t.error.help})" if t.error.help else "")}}
             for t in report.errors]
    invocation: dict = {"executionSuccessful": not notes}
    if notes:
        invocation["toolExecutionNotifications"] = notes
    return invocation
