"""The probe stage: confirm each finding by a numerical experiment, then verify its fix on a repaired copy.

    findings --probe(target, graph, program)--> findings with a ProbeResult each

For every finding whose rule has a probe (:data:`initlint.probes.PROBES`, or the rule's own), the stage

1. merges what the probes need into ONE forward and backward pass of the captured graph on the chosen device,
   at the probe's batch and spatial caps, and lets each probe judge its finding from it: ``confirmed``,
   ``not-reproduced`` or ``inconclusive``, with the measured numbers beside the predicted ones;
2. applies the machine form of every confirmed (or inconclusive) finding's fix to ONE deep copy of the
   model, runs one more pass on it, and measures again: ``fix_verified`` is true when the problem is gone,
   with the after-fix numbers; only where that joint check fails is a fix tried on its own.

The user's model is never written: a pass runs under :func:`initlint.state.preserved` and repairs work on a
deep copy. :func:`fix` returns that repaired copy for code that wants it.

>>> import torch
>>> from torch import nn
>>> from initlint.api import lint
>>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
>>> _ = nn.init.normal_(model[0].weight, std=1.0)
>>> f = lint(model, torch.randn(32, 64), select=["IL101"], probe=True).findings[0]
>>> f.probe.status.value, f.probe.fix_verified
('confirmed', True)
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .capture.program import Program
from .errors import UsageError, describe_exception
from .findings import Finding, ProbeResult, ProbeStatus
from .graph import ModelGraph
from .load import Target
from .ops import Capture, OpKind
from .probes import PROBES, Probe, probe_for, repairs
from .probes.records import Context, Edit, Evidence, Measurement, Needs, Unrepairable
from .probes.runner import MAX_BATCH, MAX_SPATIAL, Runnable, capped, edited_module, run_pass
from .state import preserved

PROGRESS_AFTER = 1.0  # seconds of probing before a progress bar appears on a terminal
# The passes' samples: below the batch cap, as few as keep ELEMENTS elements per sample-batch at every op the
# passes read (a second moment over n independent elements has a relative standard error sqrt(2 / n): 1.1% at
# 2^14, against thresholds of 1.5x and more with a gray band of 1.25), and at least MIN_BATCH samples (the
# spatial elements of one sample are correlated; BatchNorm's batch statistics). Only where every finding's probe
# reads the stage's passes alone (``Probe.passes_only``).
ELEMENTS = 1 << 14
MIN_BATCH = 8


@dataclass(frozen=True)
class ProbeOptions:
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    seed: int = 0
    max_batch: int = MAX_BATCH
    max_spatial: int = MAX_SPATIAL
    verify: bool = True  # repair a copy and measure again
    progress: bool | None = None  # None: on a terminal, after PROGRESS_AFTER seconds


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; anything else must name an available torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device `{device}`", help="use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available", help="use --device cpu or auto")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"--device {device}: MPS is not available", help="use --device cpu or auto")
    return dev


def probe(target: Target, graph: ModelGraph, findings: Sequence[Finding], *, program: Program,
          options: ProbeOptions = ProbeOptions(), rules: Sequence = ()) -> tuple[Finding, ...]:
    """``findings`` with a :class:`~initlint.findings.ProbeResult` each (``skipped`` where no probe exists)."""
    own = {r.code: getattr(r, "probe", None) for r in rules}
    chosen = [probe_for(f.code, own.get(f.code)) for f in findings]
    if not any(chosen):
        return tuple(dataclasses.replace(f, probe=_skipped()) for f in findings)
    dev = resolve_device(options.device)
    model = target.model
    bar = _Progress(2 * len(findings) + 2, options.progress)
    with preserved(model):
        runnable = capped(Runnable.of(program, graph), options.max_batch, options.max_spatial)
        needs = [_needs(p, graph, f) for p, f in zip(chosen, findings)]
        union = _union(needs)
        enough = _enough_batch(graph, runnable, union, [p for p in chosen if p is not None], options.max_batch)
        at_cap = runnable
        if enough is not None:
            runnable = capped(runnable, enough, options.max_spatial)
        evidence, runnable = _shared_pass(program, graph, runnable, union, dev, options.seed, at_cap)
        bar.step()
        ctx = Context(model, graph, runnable.inputs, dev, options.seed, evidence, runnable)
        before = []
        for p, f, n in zip(chosen, findings, needs):
            before.append(None if p is None else _measure(p, ctx, f, n))
            bar.step()
        after: dict[int, tuple[Measurement | None, str]] = {}
        if options.verify:
            after = _verify(program, graph, runnable, model, findings, chosen, needs, before, dev, options, bar)
    bar.close()
    out = []
    for i, (f, p, m) in enumerate(zip(findings, chosen, before)):
        if p is None:
            out.append(dataclasses.replace(f, probe=_skipped()))
            continue
        done, note = after.get(i, (None, ""))
        verified = None if done is None else done.status is ProbeStatus.NOT_REPRODUCED
        detail = "; ".join(x for x in (m.detail, note) if x)
        result = ProbeResult(m.status, MappingProxyType(dict(m.numbers)), detail, verified,
                             MappingProxyType(dict(done.numbers)) if done is not None else MappingProxyType({}))
        out.append(dataclasses.replace(f, probe=result))
    return tuple(out)


def _enough_batch(graph: ModelGraph, runnable: Runnable, needs: Needs, probes: Sequence[Probe],
                  cap: int) -> int | None:
    """The batch below the cap at which every op the passes read still has :data:`ELEMENTS` elements (at least
    :data:`MIN_BATCH` samples), or None to keep the capped inputs: a probe that is not ``passes_only``, an
    exported graph (its shapes are fixed), inputs cut in their spatial dimensions, or an op read whose leading
    dimension is not the batch."""
    if not probes or not all(p.passes_only for p in probes) or runnable.capture is Capture.EXPORT:
        return None
    names = set(needs.read) | {t.op for t in needs.taps}
    inputs = [op for op in graph.of_kind(OpKind.INPUT) if op.shape]
    tensors = [t for t in pytree.tree_leaves((tuple(runnable.inputs.args), dict(runnable.inputs.kwargs)))
               if isinstance(t, torch.Tensor)]
    if not names or not inputs or not tensors or any(t.dim() == 0 for t in tensors):
        return None
    example = {op.shape[0] for op in inputs}
    batch = {t.shape[0] for t in tensors}
    if len(example) != 1 or len(batch) != 1:
        return None
    example, batch = example.pop(), batch.pop()
    if batch <= MIN_BATCH or batch > cap or sorted(tuple(op.shape[1:]) for op in inputs) != sorted(
            tuple(t.shape[1:]) for t in tensors):
        return None
    per_sample = []
    for name in names:
        op = graph.op(name) if name in graph.ops else None
        if op is None or op.kind is OpKind.PARAM or not op.shape or op.shape[0] != example or not op.numel:
            return None
        per_sample.append(op.numel // example)
    enough = max(MIN_BATCH, -(-ELEMENTS // max(min(per_sample), 1)))
    return enough if enough < batch else None


def _skipped() -> ProbeResult:
    return ProbeResult(ProbeStatus.SKIPPED, detail="no probe for this rule")


def _needs(p: Probe | None, graph: ModelGraph, f: Finding) -> Needs | Exception:
    if p is None:
        return Needs()
    try:
        return p.needs(graph, f)
    except Exception as exc:  # noqa: BLE001 - a probe that cannot plan is inconclusive, not fatal
        return exc


def _union(needs: Sequence[Needs | Exception]) -> Needs:
    total = Needs()
    for n in needs:
        if isinstance(n, Needs):
            total = total | n
    return total


def _shared_pass(program: Program, graph: ModelGraph, runnable: Runnable, needs: Needs, dev: torch.device,
                 seed: int, at_cap: Runnable | None = None) -> tuple[Evidence, Runnable]:
    """The shared pass at the caps (below them where ``runnable`` is cut further than ``at_cap``); on failure (a
    model that needs a batch or its full input size), at the caps, then once uncapped."""
    if at_cap is not None and at_cap.inputs is not runnable.inputs:
        try:
            return run_pass(runnable, needs, dev, seed), runnable
        except Exception:  # noqa: BLE001 - a model that needs its batch: at the caps
            runnable = at_cap
    try:
        return run_pass(runnable, needs, dev, seed), runnable
    except Exception as first:  # noqa: BLE001
        full = Runnable.of(program, graph)
        if full.inputs is runnable.inputs:
            return Evidence(error=f"the model did not run ({describe_exception(first)})"), runnable
        try:
            return run_pass(full, needs, dev, seed), full
        except Exception as exc:  # noqa: BLE001
            return Evidence(error=f"the model did not run ({describe_exception(exc)})"), full


def _measure(p: Probe, ctx: Context, f: Finding, needs: Needs | Exception) -> Measurement:
    if isinstance(needs, Exception):
        return Measurement({}, ProbeStatus.INCONCLUSIVE, f"the probe could not plan: {describe_exception(needs)}")
    try:
        return p.measure(ctx, f)
    except Unrepairable as exc:
        return Measurement({}, ProbeStatus.INCONCLUSIVE, str(exc))
    except Exception as exc:  # noqa: BLE001 - a probe failure never stops the lint
        return Measurement({}, ProbeStatus.INCONCLUSIVE, f"the probe failed: {describe_exception(exc)}")


def _verify(program, graph, runnable, model, findings, chosen, needs, before, dev, options, bar):
    """Repair every fixable finding on one copy and measure again; one by one where the joint check fails."""
    group = [i for i, (p, m) in enumerate(zip(chosen, before))
             if p is not None and p.repair is not None and m is not None
             and m.status in (ProbeStatus.CONFIRMED, ProbeStatus.INCONCLUSIVE) and isinstance(needs[i], Needs)]
    if not group:
        return {}
    results = _repaired(program, graph, runnable, model, findings, chosen, needs, before, group, dev, options)
    for _ in group:
        bar.step()
    failed = [i for i in group if results.get(i, (None,))[0] is not None
              and results[i][0].status is not ProbeStatus.NOT_REPRODUCED]
    if len(group) > 1:
        for i in failed:
            alone = _repaired(program, graph, runnable, model, findings, chosen, needs, before, [i], dev, options)
            if i in alone and alone[i][0] is not None:
                m, note = alone[i]
                results[i] = (m, "; ".join(x for x in (note, "fix verified alone: the joint fix did not remove it"
                                                        if m.status is ProbeStatus.NOT_REPRODUCED else "") if x))
    return results


def _repaired(program, graph, runnable, model, findings, chosen, needs, before, group, dev, options):
    # built-in repairs write parameters only through `repairs`, so their copy shares what they leave alone; a
    # third-party repair gets a full deep copy
    builtin = all(chosen[i] is PROBES.get(findings[i].code) for i in group)
    twin = repairs.twin(model) if builtin else copy.deepcopy(model)
    edits: list[Edit] = []
    applied, results = [], {}
    with torch.no_grad():
        for i in group:
            try:
                found = tuple(chosen[i].repair(twin, findings[i], graph))
            except Unrepairable as exc:
                results[i] = (None, f"no machine form of the fix: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001
                results[i] = (None, f"the repair failed: {describe_exception(exc)}")
                continue
            if found and program.capture is Capture.HOOKS:
                results[i] = (None, "its fix edits the forward pass, which needs an fx or export capture")
                continue
            edits += found
            applied.append(i)
    repairs.forget(twin)
    if not applied:
        return results
    fixed = Runnable.of(program, graph, twin, edits).with_inputs(runnable.inputs, runnable.values)
    total = _union([needs[i] for i in applied])
    try:
        evidence = run_pass(fixed, total, dev, options.seed)
    except Exception as exc:  # noqa: BLE001
        evidence = Evidence(error=f"the repaired model did not run ({describe_exception(exc)})")
    ctx = Context(twin, graph, runnable.inputs, dev, options.seed, evidence, fixed)
    for i in applied:
        results[i] = (_measure(chosen[i], dataclasses.replace(ctx, before=before[i]), findings[i], needs[i]), "")
    return results


# -- the repaired copy, for users ----------------------------------------------------------------------------


def fix(model: nn.Module, report, example_inputs=None) -> nn.Module:
    """A deep copy of ``model`` with the machine form of every fix in ``report`` applied (the first target's,
    or the one linted from this instance). ``model`` is never touched.

    Fixes that change weights or modules keep ``model``'s class. A fix that edits the forward pass (a scale
    inserted after an op) returns a ``torch.fx.GraphModule`` of the copy with the edit, traced in training
    mode; port the edit to your code as the finding's fix shows.
    """
    from .capture import capture_program
    from .load import from_instance

    targets = [t for t in report.targets if t.graph is not None]
    if not targets:
        raise UsageError("the report has no linted target to take fixes from",
                         help="lint the model first: report = initlint.lint(model, example_inputs)")
    tr = targets[0]
    twin = copy.deepcopy(model)
    edits: list[Edit] = []
    with torch.no_grad():
        for f in tr.findings:
            p = probe_for(f.code)
            if p is None or p.repair is None or (f.probe is not None and f.probe.status is ProbeStatus.NOT_REPRODUCED):
                continue
            try:
                edits += p.repair(twin, f, tr.graph)
            except Unrepairable:
                continue
    repairs.forget(twin)
    if not edits:
        return twin
    # the user's model captured (left as it was), its graph bound to the copy: a repair that changes a call's
    # arguments with its weight's shape (IL103 on F.conv_transpose2d) leaves a copy whose own forward, unedited,
    # does not run
    graph, program = capture_program(from_instance(model, example_inputs))
    if program.capture is Capture.HOOKS:
        raise UsageError("the fixes insert scales in forward, which needs a model torch.fx or torch.export can capture",
                         help="apply those fixes by hand, as the findings' fix code shows")
    return edited_module(Runnable.of(program, graph, twin, edits))


# -- progress ------------------------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on stderr, shown only on a terminal and only once probing takes over a second."""

    def __init__(self, total: int, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = (hasattr(self.stream, "isatty") and self.stream.isatty()) if enabled is None else enabled
        self.total, self.done, self.start, self.shown = max(total, 1), 0, time.monotonic(), False

    def step(self) -> None:
        self.done += 1
        if self.enabled and time.monotonic() - self.start > PROGRESS_AFTER:
            width = 24
            fill = int(width * min(self.done, self.total) / self.total)
            self.stream.write(f"\rinitlint: probing [{'#' * fill}{'.' * (width - fill)}] "
                              f"{min(self.done, self.total)}/{self.total}")
            self.stream.flush()
            self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


__all__ = ["probe", "fix", "ProbeOptions", "resolve_device", "PROGRESS_AFTER"]
