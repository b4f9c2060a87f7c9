"""Precision and recall of every rule on the benchmark suite, probe confirmation and fix verification rates,
and the time per model.

    .venv/bin/python -m benchmarks.report [--fast] [--probe] [--only IL2,zoo] [--json FILE] [--fuzz N]

Each case of :mod:`benchmarks.cases` is linted with every installed rule. Per rule: a true positive is a case
that must get the rule and does (a finding at warning or error level), a false negative one that must and does
not, a false positive one that must not and does. Precision is TP / (TP + FP), recall TP / (TP + FN). With
``--probe`` (when the probe stage is installed), the probe confirmation rate is the share of true-positive
findings whose probe says ``confirmed`` and the fix verification rate the share whose fix the probe verified.
A rule that is not installed is listed as such, its cases unscored. ``--fuzz N`` also runs N generated models
(:mod:`benchmarks.fuzz`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGET = 0.95  # the precision and recall target


@dataclass(frozen=True)
class Outcome:
    """What initlint said about one case."""

    case: object  # benchmarks.cases.Case
    reported: frozenset[str]  # codes with a finding at warning or error level
    findings: tuple  # every Finding, info included
    error: str | None  # the target's error, or a failure to build the model
    seconds: float  # the lint call alone (not the model's construction)
    capture: str | None = None

    @property
    def missing(self) -> frozenset[str]:
        return self.case.must - self.reported

    @property
    def unexpected(self) -> frozenset[str]:
        return self.case.must_not & self.reported


@dataclass(frozen=True)
class RuleScore:
    code: str
    name: str | None  # None: not installed
    tp: int = 0
    fn: int = 0
    fp: int = 0
    tn: int = 0
    probed: int = 0  # true-positive findings that carry a probe result
    confirmed: int = 0
    verified: int = 0
    seconds: tuple[float, ...] = ()  # lint time of the rule's own pair cases

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    def to_dict(self) -> dict:
        return {"code": self.code, "name": self.name, "tp": self.tp, "fn": self.fn, "fp": self.fp, "tn": self.tn,
                "precision": self.precision, "recall": self.recall, "probed": self.probed,
                "confirmed": self.confirmed, "verified": self.verified,
                "seconds_per_model": statistics.mean(self.seconds) if self.seconds else None}


def installed() -> dict[str, str]:
    from initlint.registry import discover

    return {r.code: r.name for r in discover()}


def probe_available() -> bool:
    from initlint.api import Options

    return "probe" in {f.name for f in dataclasses.fields(Options)}


def run_case(case, probe: bool = False) -> Outcome:
    """Build the case's model and lint it with every installed rule."""
    import torch

    from initlint import lint
    from initlint.findings import Severity

    try:
        model, inputs = case.build()
    except Exception as exc:  # noqa: BLE001 - a broken case is reported, the others still run
        return Outcome(case, frozenset(), (), f"cannot build the model: {type(exc).__name__}: {exc}", 0.0)
    kwargs = {"probe": True} if probe else {}
    t0 = time.perf_counter()
    with torch.random.fork_rng():
        report = lint(model, inputs, **kwargs)
    seconds = time.perf_counter() - t0
    target = report.targets[0]
    error = None if target.error is None else f"{target.error.kind.value}: {target.error.message}"
    reported = frozenset(f.code for f in target.findings if f.severity.rank >= Severity.WARNING.rank)
    return Outcome(case, reported, tuple(target.findings), error, seconds, target.capture)


def score(outcomes: Sequence[Outcome], codes: Iterable[str], names: dict[str, str]) -> list[RuleScore]:
    from initlint.findings import ProbeStatus, Severity

    scores = []
    for code in codes:
        s = RuleScore(code, names.get(code))
        if s.name is None:
            scores.append(s)
            continue
        tp = fn = fp = tn = probed = confirmed = verified = 0
        for o in outcomes:
            hit = code in o.reported
            if code in o.case.must:
                tp, fn = tp + hit, fn + (not hit)
                if hit:
                    for f in o.findings:
                        if f.code == code and f.severity.rank >= Severity.WARNING.rank and f.probe is not None:
                            probed += 1
                            confirmed += f.probe.status is ProbeStatus.CONFIRMED
                            verified += f.probe.fix_verified is True
            elif code in o.case.must_not:
                fp, tn = fp + hit, tn + (not hit)
        seconds = tuple(o.seconds for o in outcomes if o.case.rule == code and o.error is None)
        scores.append(dataclasses.replace(s, tp=tp, fn=fn, fp=fp, tn=tn, probed=probed, confirmed=confirmed,
                                          verified=verified, seconds=seconds))
    return scores


def totals(scores: Sequence[RuleScore]) -> RuleScore:
    live = [s for s in scores if s.name is not None]
    return RuleScore("all", "", *(sum(getattr(s, k) for s in live) for k in ("tp", "fn", "fp", "tn", "probed",
                                                                            "confirmed", "verified")),
                     tuple(t for s in live for t in s.seconds))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _rate(n: int, d: int) -> str:
    return "-" if d == 0 else f"{n}/{d}"


def table(scores: Sequence[RuleScore], probe: bool) -> str:
    head = (f"{'rule':6s} {'name':29s} {'TP':>3s} {'FN':>3s} {'FP':>3s} {'precision':>9s} {'recall':>7s} "
            f"{'probe-confirmed':>15s} {'fix-verified':>12s} {'s/model':>8s}")
    lines = [head, "-" * len(head)]
    for s in [*scores, totals(scores)]:
        if s.name is None:
            lines.append(f"{s.code:6s} {'(not installed)':29s}")
            continue
        conf = _rate(s.confirmed, s.probed) if probe else "-"
        ver = _rate(s.verified, s.probed) if probe else "-"
        if probe and s.probed == 0 and s.tp:
            conf = "unprobed"
        sec = f"{statistics.mean(s.seconds):.2f}" if s.seconds else "-"
        lines.append(f"{s.code:6s} {s.name[:29]:29s} {s.tp:3d} {s.fn:3d} {s.fp:3d} {_pct(s.precision):>9s} "
                     f"{_pct(s.recall):>7s} {conf:>15s} {ver:>12s} {sec:>8s}")
    return "\n".join(lines)


def misses(outcomes: Sequence[Outcome], names: dict[str, str]) -> list[str]:
    """One line per case that errored, missed a code it must get, or got one it must not."""
    from initlint.findings import Severity

    lines = []
    for o in outcomes:
        if o.error:
            lines.append(f"{o.case.name}: ERROR {o.error}")
        missing = sorted(c for c in o.missing if c in names)
        if missing:
            got = ", ".join(sorted(f"{f.code}({f.severity.value})" for f in o.findings)) or "nothing"
            lines.append(f"{o.case.name}: missed {', '.join(missing)} (got {got})")
        for code in sorted(o.unexpected):
            for f in o.findings:
                if f.code == code and f.severity.rank >= Severity.WARNING.rank:
                    lines.append(f"{o.case.name}: unexpected {code} {f.severity.value} at `{f.module}`: {f.message}")
    return lines


def accuracy_record(scores: Sequence[RuleScore]) -> dict:
    """What the baseline keeps: per installed rule and overall, precision, recall and the counts behind them."""
    return {s.code: {"precision": s.precision, "recall": s.recall, "tp": s.tp, "fn": s.fn, "fp": s.fp}
            for s in [*scores, totals(scores)] if s.name is not None}


def probe_misses(outcomes: Sequence[Outcome]) -> list[str]:
    """True-positive findings whose probe did not confirm them, or whose fix it did not verify."""
    from initlint.findings import ProbeStatus, Severity

    lines = []
    for o in outcomes:
        for f in o.findings:
            if f.code not in o.case.must or f.severity.rank < Severity.WARNING.rank or f.probe is None:
                continue
            if f.probe.status is not ProbeStatus.CONFIRMED or f.probe.fix_verified is not True:
                verified = {True: "fix verified", False: "fix NOT verified", None: "fix not tried"}[f.probe.fix_verified]
                lines.append(f"{o.case.name}: {f.code} at `{f.module}` probe {f.probe.status.value}, {verified}"
                             + (f": {f.probe.detail}" if f.probe.detail else ""))
    return lines


def select_cases(fast: bool, only: str | None):
    from benchmarks.cases import CASES, FAST

    cases = FAST if fast else CASES
    if only:
        keys = [k.strip() for k in only.split(",") if k.strip()]
        cases = tuple(c for c in cases if any(c.group.startswith(k) or c.name.startswith(k) for k in keys))
    return cases


def evaluate(cases, probe: bool = False, progress=None) -> tuple[list[Outcome], list[RuleScore], dict[str, str]]:
    from benchmarks.cases import CODES

    import torch

    names = installed()
    outcomes = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared machine; also makes timings steadier
    try:
        for c in cases:
            o = run_case(c, probe)
            outcomes.append(o)
            if progress:
                progress(o)
    finally:
        torch.set_num_threads(threads)
    return outcomes, score(outcomes, CODES, names), names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="only the subset the test suite runs (tests/bench)")
    ap.add_argument("--probe", action="store_true", help="also run the probes (--probe) on every case")
    ap.add_argument("--only", help="cases whose rule or name starts with one of these (IL2,zoo/gpt2)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--verbose", "-v", action="store_true", help="one line per case")
    ap.add_argument("--fuzz", type=int, default=0, metavar="N", help="also lint N generated models")
    ap.add_argument("--record", action="store_true",
                    help="write precision and recall per rule to benchmarks/baseline.json (with --fast: what CI checks)")
    args = ap.parse_args(argv)
    probe = args.probe and probe_available()
    if args.probe and not probe:
        print("note: the probe stage is not installed (initlint.lint has no `probe` option): probe columns empty")
    cases = select_cases(args.fast, args.only)

    def progress(o: Outcome) -> None:
        if args.verbose:
            flag = "ok" if not (o.error or o.missing or o.unexpected) else "MISS"
            print(f"  {o.case.name:48s} {o.capture or '-':7s} {o.seconds:6.2f}s {flag:4s} "
                  f"{','.join(sorted(o.reported)) or '-'}", flush=True)

    t0 = time.perf_counter()
    outcomes, scores, names = evaluate(cases, probe, progress)
    wall = time.perf_counter() - t0
    pairs = sum(1 for c in cases if c.rule and not c.fixed)
    print(f"\n{len(cases)} cases ({pairs} defective/fixed pairs, {sum(c.rule is None for c in cases)} zoo models), "
          f"{len(names)} rules installed, {wall:.0f} s\n")
    print(table(scores, probe))
    t = totals(scores)
    lint_times = [o.seconds for o in outcomes if o.error is None]
    if lint_times:
        print(f"\ntime per model: median {statistics.median(lint_times):.2f} s, mean {statistics.mean(lint_times):.2f} s, "
              f"max {max(lint_times):.2f} s ({max(outcomes, key=lambda o: o.seconds).case.name})")
    below = [s.code for s in scores if s.name and any(x is not None and x < TARGET for x in (s.precision, s.recall))]
    print(f"overall precision {_pct(t.precision)}, recall {_pct(t.recall)}; rules below {TARGET:.0%}: "
          f"{', '.join(below) or 'none'}")
    lines = misses(outcomes, names)
    if lines:
        print(f"\nmisses ({len(lines)}):")
        for line in lines:
            print("  " + line)
    if args.record:
        from benchmarks import baseline

        baseline.record("accuracy_fast" if args.fast else "accuracy", accuracy_record(scores))
        print(f"\nrecorded in {baseline.PATH}")
    if probe:
        lines = probe_misses(outcomes)
        print(f"\nprobe misses ({len(lines)}):" if lines else "\nprobe misses: none")
        for line in lines:
            print("  " + line)
    fuzz = None
    if args.fuzz:
        from benchmarks import fuzz as fuzz_mod

        fuzz = fuzz_mod.run(args.fuzz)
        print("\n" + fuzz_mod.summary(fuzz))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cases": [{"name": o.case.name, "reported": sorted(o.reported), "error": o.error,
                                  "seconds": o.seconds, "capture": o.capture} for o in outcomes],
                       "rules": [s.to_dict() for s in scores], "all": totals(scores).to_dict(),
                       **({"fuzz": fuzz_mod.to_dict(fuzz)} if fuzz is not None else {})}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
