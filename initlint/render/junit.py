"""``--format junit``: JUnit XML for CI test reporters (Jenkins, GitLab, Azure, test-report actions).

One ``<testsuite>`` per target; one ``<testcase>`` per finding, a ``<failure>`` when the finding is at or
above ``--fail-level`` (passing, with the message in ``<system-out>``, when below). A clean target is one
passing test case; a target that could not be linted is one test case with an ``<error>``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ..report import Report, TargetReport

CLEAN = "no findings"
NOT_LINTED = "lint"


def render(report: Report, options) -> str:
    root = ET.Element("testsuites", name="initlint")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for t in report.targets:
        suite = _suite(t, options)
        for key in totals:
            totals[key] += int(suite.get(key))
        root.append(suite)
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suite(t: TargetReport, options) -> ET.Element:
    suite = ET.Element("testsuite", name=t.target)
    failures = errors = 0
    if t.error is not None:
        case = ET.SubElement(suite, "testcase", classname=t.target, name=NOT_LINTED)
        error = ET.SubElement(case, "error", message=t.error.message, type=t.error.kind.value)
        error.text = t.error.help
        errors += 1
    elif not t.findings:
        ET.SubElement(suite, "testcase", classname=t.target, name=CLEAN)
    for f in t.findings:
        attrs = {"classname": t.target, "name": f"{f.code} {f.op or f.module or t.target}"}
        if f.location is not None:
            attrs.update(file=f.location.file, line=str(f.location.line))
        case = ET.SubElement(suite, "testcase", attrs)
        text = f"{f.location or t.target}: {f.code} [{f.severity.value}] {f.message}"
        if f.fix is not None:
            text += f"\nhelp: {f.fix.summary}" + "".join(f"\n    | {line}" for line in f.fix.code.splitlines())
        if f.severity.rank >= options.fail_level.rank:
            failure = ET.SubElement(case, "failure", message=f"{f.code} {f.message}", type=f.code)
            failure.text = text
            failures += 1
        else:
            ET.SubElement(case, "system-out").text = text
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", "0")
    return suite
