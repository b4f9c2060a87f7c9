"""The public API: ``lint`` composes the pipeline's stages in a few lines.

    load -> capture -> propagate -> check -> (probe) -> Report

>>> import torch
>>> from torch import nn
>>> report = lint(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), torch.randn(2, 8), select=[])
>>> report.targets[0].capture, report.exit_code()
('fx', 0)
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .errors import ErrorKind, InitlintError, describe_exception
from .findings import Severity
from .registry import Rule, discover, select as select_rules
from .report import Report, TargetError, TargetReport


@dataclass(frozen=True)
class Options:
    select: Sequence[str] | None = None
    ignore: Sequence[str] = ()
    input_shapes: Sequence[Sequence[int]] | None = None
    input_dtypes: Sequence[str] = ()
    capture: str | None = None  # pin a rung: "fx", "export" or "hooks"
    severity_overrides: dict[str, Severity] = field(default_factory=dict)
    signals: bool = False  # also measure every op's second moments (one forward and backward pass)
    device: str = "auto"  # where that pass (and the probes) run: auto, cpu or cuda
    probe: bool = False  # confirm each finding numerically and verify its fix (initlint.probe)


def lint(model_or_target: nn.Module | str | Sequence[str], example_inputs: Any = None, **options) -> Report:
    """Lint a model instance or one or more target strings; the same report the CLI renders."""
    opts = Options(**options)
    rules = select_rules(discover(), opts.select, opts.ignore)
    targets = [model_or_target] if isinstance(model_or_target, (str, nn.Module)) else list(model_or_target)
    return Report(tuple(lint_one(t, example_inputs, rules, opts) for t in targets))


def lint_one(target: nn.Module | str, example_inputs: Any, rules: Sequence[Rule], opts: Options) -> TargetReport:
    from . import load as load_mod
    from .capture import capture
    from .check import check

    label = target if isinstance(target, str) else f"<{type(target).__name__}>"
    try:
        if isinstance(target, str):
            loaded = load_mod.load(target, opts.input_shapes, opts.input_dtypes)
        else:
            loaded = load_mod.from_instance(target, example_inputs, opts.input_shapes, opts.input_dtypes)
        measured = program = None
        with collector_paused():
            if opts.signals or opts.probe:
                from .capture import capture_program

                graph, program = capture_program(loaded, opts.capture)
                if opts.signals:
                    from .measure import measure

                    measured = measure(graph, program, opts.device)
            else:
                graph = capture(loaded, opts.capture)
            skipped: tuple[str, ...] = ()
            if not graph.has_weight_values:  # a model on `meta`: only the structural rules can speak
                skipped = tuple(r.code for r in rules if r.needs_weights)
                rules = [r for r in rules if not r.needs_weights]
            if measured is not None or any(r.needs_signals for r in rules):
                from .propagate import propagate

                graph = propagate(graph, loaded.inputs, model=loaded.model, measured=measured)
            findings, failures = check(graph, rules)
        if opts.probe and findings:
            from .probe import ProbeOptions, probe

            findings = list(probe(loaded, graph, findings, program=program, options=ProbeOptions(device=opts.device),
                                  rules=rules))
    except InitlintError as exc:
        return TargetReport(label, error=TargetError(exc.kind, exc.line, exc.help), exception=exc)
    except Exception as exc:  # noqa: BLE001 - anything else is ours
        return TargetReport(label, error=_bug(describe_exception(exc)), exception=exc)
    findings = [_override(f, opts.severity_overrides) for f in findings]
    error = None
    if failures:
        first = failures[0]
        error = _bug(f"rule {first.code} raised {first.error}" + (f" at op `{first.op}`" if first.op else ""))
    return TargetReport(
        label, loaded.name, graph.capture.value, len(graph), graph.unknown, graph.notes, tuple(findings),
        error, graph, measured=measured, skipped=skipped,
    )


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the static stages, as mypy raises its thresholds: a lint
    keeps every op, estimate and grid of the model alive to its end, so each full collection during it walks
    them all again, for nothing (a lint's own cycles, the fx graph's linked nodes, wait for the next
    collection after it). It made the rules of a 1000-block MLP take twice as long per op as a 100-block one's
    (0.21 s against 0.10 s without). Left alone where the caller has paused it."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _bug(text: str) -> TargetError:
    return TargetError(ErrorKind.INTERNAL, f"internal error, this is a bug in initlint: {text}",
                       "please report it with the model and the command (run with --verbose for the traceback)")


def _override(f, overrides: dict[str, Severity]):
    import dataclasses

    sev = overrides.get(f.code) or overrides.get(f.name)
    return dataclasses.replace(f, severity=sev) if sev else f
