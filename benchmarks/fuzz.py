"""Robustness under generated models: a hypothesis strategy for random architectures, and the checks on each.

    .venv/bin/python -m benchmarks.fuzz [N] [--seed S]      # or: python -m benchmarks.report --fuzz N

Exit status 1 when a model got an internal error, a malformed error or had its state changed.

The models come from :mod:`benchmarks.generated` (specs, the hypothesis strategy, the builder).

Each model is linted with the measurement pass (``lint(..., signals=True)``) and checked:

1. no internal error: the lint returns findings, or a well-formed error (a kind other than ``internal``, a
   message, a help line);
2. the model's state (parameters, buffers, ``.grad``, ``requires_grad``, modes, RNG) is unchanged, as
   ``tests/test_state.py`` checks it;
3. every op's predicted forward second moment is within :data:`TOLERANCE` of the measured one, or the op is
   listed as unknown or predicted by the fallback (no transfer function), or its measurement is not finite.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

from benchmarks.generated import Spec, build, specs  # noqa: E402

# A factor of 4 in second moment (2 in std). Generated models are narrow (width 16-32) and the measurement
# sees one batch: at width 16 one weight layer's measured gain scatters by about sqrt(2/16) = 35% around its
# expectation, and the blocks compound that (the accuracy benchmark's factor 1.5 is met by ~90% of ops on wider
# models); a factor 4 separates those fluctuations from wrong transfer functions, which are off by the
# constant factors the rules care about (2 for a missing ReLU halving, 4 for a missed residual doubling twice).
TOLERANCE = 2.0  # |log2(predicted / measured)|
TINY = 1e-20  # second moments at or below this are zeros (a zero-initialized layer)
# A measured exact zero in float32: a mean that cancels (an InstanceNorm's output averaged over the dims it
# normalized) leaves rounding of (1e-7 x its terms' scale)^2, measured up to 7e-17.
ROUNDING = 1e-12


# -- checks --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    kind: str  # "internal-error", "malformed-error", "state-changed", "prediction"
    detail: str
    op_kind: str = ""  # for predictions: the op's kind and target, to group failures


@dataclass(frozen=True)
class Result:
    spec: Spec
    problems: tuple[Problem, ...] = ()
    ops: int = 0
    compared: int = 0  # ops whose prediction was compared with the measurement
    excused: int = 0  # unknown or fallback ops, not compared
    error: str | None = None  # a clean error the lint reported
    seconds: float = 0.0


def check(spec: Spec) -> Result:
    """Build, lint with the measurement pass, and check the three properties."""
    from initlint import lint
    from initlint.errors import ErrorKind
    from initlint.ops import OpKind
    from initlint.propagate import predict
    from tests.test_state import assert_same, snapshot

    model, x = build(spec)
    before = snapshot(model)
    t0 = time.perf_counter()
    try:
        report = lint(model, x, signals=True, device="cpu")
    except Exception as exc:  # noqa: BLE001 - escaping the API at all is the failure being looked for
        return Result(spec, (Problem("internal-error", f"lint raised {type(exc).__name__}: {exc}"),))
    seconds = time.perf_counter() - t0
    problems: list[Problem] = []
    try:
        assert_same(before, snapshot(model))
    except AssertionError as exc:
        problems.append(Problem("state-changed", str(exc) or "model state changed"))
    target = report.targets[0]
    if target.error is not None:
        e = target.error
        if e.kind is ErrorKind.INTERNAL:
            problems.append(Problem("internal-error", e.message))
        elif not (e.message and e.help):
            problems.append(Problem("malformed-error", f"{e.kind.value}: {e.message!r}, help {e.help!r}"))
        return Result(spec, tuple(problems), target.ops, error=e.message, seconds=seconds)
    graph, measured = target.graph, target.measured or {}
    prediction = predict(graph, x, model=model)  # static: what the rules see, fallback ops listed
    fallback = set(prediction.fallback)
    compared = n_excused = 0
    for op in graph:
        if op.kind in (OpKind.INPUT, OpKind.OUTPUT, OpKind.PARAM):
            continue
        m, p = measured.get(op.name), prediction.signals.get(op.name)
        if m is None or p is None or not math.isfinite(m.forward.second):
            continue
        if op.kind is OpKind.UNKNOWN or op.name in fallback:
            n_excused += 1
            continue
        compared += 1
        r = _log2(p.forward.second, m.forward.second)
        if abs(r) > TOLERANCE:
            problems.append(Problem("prediction", f"`{op.name}` ({op.kind.value} {op.target}, module `{op.module}`): "
                                    f"predicted {p.forward.second:.3g}, measured {m.forward.second:.3g} "
                                    f"(log2 {r:+.2f})", f"{op.kind.value} {op.target}"))
    return Result(spec, tuple(problems), len(graph), compared, n_excused, seconds=seconds)


def _log2(pred: float, meas: float) -> float:
    if pred <= TINY and meas <= ROUNDING:
        return 0.0
    if pred <= TINY or meas <= TINY:
        return math.inf
    return math.log2(pred / meas)


# -- running many ----------------------------------------------------------------------------------------------------


HARD = ("internal-error", "malformed-error", "state-changed")  # must never happen: the test raises, hypothesis shrinks


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.problems]

    @property
    def hard(self) -> list[Result]:
        return [r for r in self.results if any(p.kind in HARD for p in r.problems)]

    @property
    def compared(self) -> int:
        return sum(r.compared for r in self.results)

    @property
    def beyond(self) -> int:
        """Op predictions compared and found beyond the tolerance."""
        return sum(sum(p.kind == "prediction" for p in r.problems) for r in self.results)

    @property
    def models_beyond(self) -> int:
        return sum(any(p.kind == "prediction" for p in r.problems) for r in self.results)


def run(n: int, seed: int = 0, raise_hard: bool = False) -> Run:
    """``n`` generated models (drawn from ``seed``), every check on each. Prediction misses are collected; hard
    problems too, or, with ``raise_hard``, raised so that hypothesis shrinks the model to a minimal one."""
    from hypothesis import Phase, seed as hseed

    out = Run()
    t0 = time.perf_counter()
    phases = [Phase.generate] + ([Phase.shrink] if raise_hard else [])

    @hseed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=phases, suppress_health_check=list(HealthCheck))
    @given(specs())
    def one(spec: Spec) -> None:
        result = check(spec)
        hard = [p for p in result.problems if p.kind in HARD]
        if raise_hard and hard:
            raise AssertionError("; ".join(f"{p.kind}: {p.detail}" for p in hard))
        out.results.append(result)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread costs more than it gives on this shared machine
    try:
        one()
    finally:
        torch.set_num_threads(threads)
    out.seconds = time.perf_counter() - t0
    return out


def _key(p: Problem) -> str:
    return p.kind if p.kind != "prediction" else f"prediction: {p.op_kind}"


def summary(r: Run, show: int = 8) -> str:
    errors = sum(x.error is not None for x in r.results)
    lines = [f"fuzz: {len(r.results)} generated models in {r.seconds:.0f} s; {len(r.hard)} with an internal error, "
             f"a malformed error or a changed state; {errors} clean errors; {r.compared} op predictions compared, "
             f"{r.beyond} ({r.beyond / max(r.compared, 1):.1%}) beyond x{2 ** TOLERANCE:.0f} of the measurement, in "
             f"{r.models_beyond} models; {sum(x.excused for x in r.results)} unknown or fallback ops excused"]
    kinds: dict[str, list[Result]] = {}
    for x in r.failures:
        for key in dict.fromkeys(_key(p) for p in x.problems):
            kinds.setdefault(key, []).append(x)
    for key, results in sorted(kinds.items(), key=lambda kv: (kv[0] not in HARD, -len(kv[1])))[:show]:
        smallest = min(results, key=lambda x: (len(x.spec.blocks), x.ops))
        detail = next(p.detail for p in smallest.problems if _key(p) == key)
        lines.append(f"  {key}: {len(results)} models; smallest: {detail}\n    {smallest.spec!r}")
    return "\n".join(lines)


def to_dict(r: Run) -> dict:
    return {"models": len(r.results), "hard": len(r.hard), "compared": r.compared, "beyond": r.beyond,
            "models_beyond": r.models_beyond, "seconds": r.seconds,
            "failures": [{"spec": repr(x.spec), "problems": [p.detail for p in x.problems]} for x in r.failures]}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", action="store_true", help="write the counts to benchmarks/baseline.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    r = run(args.n, args.seed)
    print(summary(r, show=30))
    if args.record:
        from benchmarks import baseline

        baseline.record("fuzz", {"models": len(r.results), "seed": args.seed, "hard": len(r.hard),
                                 "compared": r.compared, "beyond": r.beyond,
                                 "beyond_share": r.beyond / max(r.compared, 1)})
    return 1 if r.hard else 0


if __name__ == "__main__":
    sys.exit(main())
