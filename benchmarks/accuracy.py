"""How often the variance engine's predictions land within a factor 1.5 of the measurement.

    .venv/bin/python benchmarks/accuracy.py [MODEL ...] [--misses N] [--json FILE]

For each architecture of :mod:`benchmarks.suite`: capture, three measurement passes (CPU, seeds 0, 1, 2; the
mean of each measured moment over the three is the reference, since one pass's loss targets make the
gradient statistics noisy where few independent rows carry them), then the static prediction (with the
measurement as fallback for ops that have no transfer function, which are not counted). An op's forward
prediction is a hit when ``|log2(predicted / measured)| <= 0.585`` for the second moment of its output;
backward likewise for the gradient at its output. Inputs, parameters used as operands and the output are
read, not predicted: they are left out of the forward count (their gradients are counted). Ops whose
measurement is not finite are left out and listed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.suite import SUITE  # noqa: E402
from initlint.capture import capture_program  # noqa: E402
from initlint.graph import Moments, Signal  # noqa: E402
from initlint.load import from_instance  # noqa: E402
from initlint.measure import measure  # noqa: E402
from initlint.propagate import predict  # noqa: E402

TOLERANCE = 0.585  # |log2 ratio| <= log2(1.5): within a factor 1.5, the criterion
TINY = 1e-30  # second moments at or below this are zero (a zero-initialized branch)
SEEDS = (0, 1, 2)  # measurement passes averaged: the loss targets and dropout masks differ between them


@dataclass(frozen=True)
class Miss:
    model: str
    op: str
    kind: str
    target: str
    direction: str
    predicted: float
    measured: float
    log2: float


def average(runs: list[dict[str, Signal]]) -> dict[str, Signal]:
    """Per op, the mean over runs of each measured moment (an op missing from a run is left out)."""
    out = {}
    for name in runs[0]:
        sigs = [r[name] for r in runs if name in r]
        fwd = Moments(sum(s.forward.second for s in sigs) / len(sigs), sum(s.forward.mean for s in sigs) / len(sigs))
        backs = [s.backward for s in sigs if s.backward is not None]
        bwd = Moments(sum(b.second for b in backs) / len(backs), sum(b.mean for b in backs) / len(backs)) \
            if len(backs) == len(sigs) else None
        out[name] = Signal(fwd, bwd, max(s.max_abs or 0.0 for s in sigs))
    return out


def log2_ratio(pred: float, meas: float) -> float:
    if pred <= TINY and meas <= TINY:
        return 0.0
    if pred <= TINY or meas <= TINY:
        return math.inf
    return math.log2(pred / meas)


def evaluate(name: str):
    model, inputs = SUITE[name]()
    target = from_instance(model, inputs)
    graph, program = capture_program(target)
    t0 = time.perf_counter()
    measured = average([measure(graph, program, "cpu", seed=s) for s in SEEDS])
    t_measure = (time.perf_counter() - t0) / len(SEEDS)
    t0 = time.perf_counter()
    prediction = predict(graph, target.inputs, model=model, measured=measured)
    t_predict = time.perf_counter() - t0
    covered = set(prediction.covered(graph))
    counts = {"forward": [0, 0], "backward": [0, 0]}
    misses, skipped = [], []
    for op in graph:
        m, p = measured.get(op.name), prediction.signals.get(op.name)
        if m is None or p is None:
            continue
        pairs = []
        if op.name in covered:
            pairs.append(("forward", p.forward.second, m.forward.second))
        if m.backward is not None and p.backward is not None:
            pairs.append(("backward", p.backward.second, m.backward.second))
        for direction, pred, meas in pairs:
            if not math.isfinite(meas):
                skipped.append(f"{name}:{op.name} ({direction} measured {meas})")
                continue
            r = log2_ratio(pred, meas)
            counts[direction][1] += 1
            if abs(r) <= TOLERANCE:
                counts[direction][0] += 1
            else:
                misses.append(Miss(name, op.name, op.kind.value, op.target, direction, pred, meas, r))
    return {
        "model": name, "capture": graph.capture.value, "ops": len(graph), "fallback": list(prediction.fallback),
        "forward": counts["forward"], "backward": counts["backward"], "misses": misses, "skipped": skipped,
        "seconds": {"measure": t_measure, "predict": t_predict},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help=f"subset of: {', '.join(SUITE)}")
    ap.add_argument("--misses", type=int, default=60, help="rows of the misses table (default 60)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # a shared machine; also makes timings steadier
    names = args.models or list(SUITE)
    results = []
    print(f"{'model':24s} {'capture':7s} {'ops':>4s} {'fallback':>8s} {'forward':>10s} {'backward':>10s}")
    for name in names:
        r = evaluate(name)
        results.append(r)
        f, b = r["forward"], r["backward"]
        print(f"{name:24s} {r['capture']:7s} {r['ops']:4d} {len(r['fallback']):8d} {f[0]:4d}/{f[1]:<5d} "
              f"{b[0]:4d}/{b[1]:<5d}")
    fh, fn = sum(r["forward"][0] for r in results), sum(r["forward"][1] for r in results)
    bh, bn = sum(r["backward"][0] for r in results), sum(r["backward"][1] for r in results)
    print(f"\nforward:  {fh}/{fn} = {fh / max(fn, 1):.1%} of covered ops within x1.5")
    print(f"backward: {bh}/{bn} = {bh / max(bn, 1):.1%} of ops with a gradient within x1.5")
    misses = [m for r in results for m in r["misses"]]
    misses.sort(key=lambda m: -abs(m.log2) if math.isfinite(m.log2) else -1e9)
    if misses and args.misses:
        print(f"\nmisses ({len(misses)}, largest first):")
        print(f"{'model':22s} {'op':30s} {'kind':11s} {'dir':8s} {'predicted':>10s} {'measured':>10s} {'log2':>6s}")
        for m in misses[: args.misses]:
            print(f"{m.model:22s} {m.op[:30]:30s} {m.kind:11s} {m.direction:8s} {m.predicted:10.3g} {m.measured:10.3g} "
                  f"{m.log2:+6.2f}")
    skipped = [s for r in results for s in r["skipped"]]
    if skipped:
        print(f"\nnot comparable (measurement not finite): {', '.join(skipped)}")
    if args.json:
        with open(args.json, "w") as fh_:
            json.dump([{**r, "misses": [asdict(m) for m in r["misses"]]} for r in results], fh_, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
