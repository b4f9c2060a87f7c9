"""Capture + graph building time against the bare capture it builds on, as a ratio measured in one run.

    .venv/bin/python -m benchmarks.capture_speed [--repeat 5] [--models resnet,gpt2]

For each model: initlint's ``capture`` (tracer with source lines, shape propagation, normalization into typed
ops, weight statistics, the networkx graph) next to a bare ``torch.fx.symbolic_trace`` + ``ShapeProp`` or, when
initlint's capture used torch.export, a bare ``torch.export.export(strict=False)``. Medians of ``--repeat``
runs after one warm-up; the ratio is what to compare across machines, not the milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import real_models as R  # noqa: E402

from initlint.capture import capture  # noqa: E402
from initlint.load import from_instance  # noqa: E402


def bare_fx(model, inputs):
    from torch.fx.passes.shape_prop import ShapeProp

    gm = torch.fx.symbolic_trace(model)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    with torch.no_grad():
        ShapeProp(gm).propagate(*args)


def bare_export(model, inputs):
    if isinstance(inputs, dict):
        torch.export.export(model, (), inputs, strict=False)
    else:
        torch.export.export(model, inputs if isinstance(inputs, tuple) else (inputs,), strict=False)


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--models", default=",".join(R.ALL))
    args = p.parse_args(argv)
    print(f"{'model':20s} {'capture':8s} {'ops':>5s} {'initlint ms':>12s} {'bare ms':>9s} {'ratio':>6s}")
    ratios = []
    for name in args.models.split(","):
        model, inputs = R.ALL[name]()
        target = from_instance(model, inputs)
        g = capture(target)
        bare = bare_fx if g.capture.value == "fx" else bare_export
        ours = median_time(lambda: capture(target), args.repeat)
        base = median_time(lambda: bare(model, inputs), args.repeat)
        ratios.append(ours / base)
        print(f"{name:20s} {g.capture.value:8s} {len(g):5d} {ours * 1e3:12.1f} {base * 1e3:9.1f} {ours / base:6.2f}")
    print(f"median ratio {statistics.median(ratios):.2f}, max {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
