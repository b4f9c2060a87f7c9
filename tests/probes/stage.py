"""Running the probe stage in tests: on what a rule finds, or on a finding forced onto a chosen op."""

from __future__ import annotations

import dataclasses

import torch

from initlint import lint
from initlint.capture import capture_program
from initlint.findings import Finding, ProbeStatus, Severity
from initlint.load import from_instance
from initlint.probe import ProbeOptions, probe
from initlint.propagate import propagate

CONFIRMED, NOT_REPRODUCED, INCONCLUSIVE = (ProbeStatus.CONFIRMED, ProbeStatus.NOT_REPRODUCED,
                                           ProbeStatus.INCONCLUSIVE)


def probed(model, inputs, code: str, **options) -> list[Finding]:
    """The findings of rule ``code`` on ``model``, probed on the CPU."""
    torch.manual_seed(0)
    report = lint(model, inputs, select=[code], probe=True, device="cpu", **options)
    target = report.targets[0]
    assert target.error is None, target.error
    return [f for f in target.findings if f.code == code]


def one(model, inputs, code: str) -> Finding:
    found = probed(model, inputs, code)
    assert len(found) == 1, f"{code}: expected one finding, got {[f.message for f in found]}"
    return found[0]


def forced(model, inputs, code: str, op: str, predicted: dict, **options) -> Finding:
    """A finding of ``code`` at ``op`` with ``predicted`` made up, probed: for rules no threshold can force."""
    target = from_instance(model, inputs)
    graph, program = capture_program(target)
    graph = propagate(graph, target.inputs, model=model)
    f = Finding(code, code.lower(), Severity.WARNING, "forced", op, graph.op(op).module, None, None, predicted)
    return probe(target, graph, [f], program=program, options=dataclasses.replace(ProbeOptions(device="cpu"), **options))[0]


def confirmed_and_fixed(f: Finding) -> None:
    p = f.probe
    assert p.status is CONFIRMED, f"{f.code}: {p.status.value} ({dict(p.measured)}; {p.detail})"
    assert p.fix_verified is True, f"{f.code}: fix not verified ({dict(p.after_fix)}; {p.detail})"
