"""Speed of the variance engine: propagation against depth, and the measurement pass against a bare step.

    .venv/bin/python benchmarks/propagation_speed.py [--repeats N]

1. ``predict`` on Linear+ReLU MLPs of depth 10, 100 and 1000 (the capture is timed apart): seconds per op
   should stay flat if propagation is linear in the number of ops.
2. ``measure`` against a bare forward and backward of the same model and batch (``autograd.grad`` of the
   same loss with respect to the input and the parameters, training mode), interleaved in one run; the
   ratio of the medians should be at most 2. The first pass on a program also generates the instrumented
   code (kept for later passes); its time is shown apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.suite import SUITE  # noqa: E402
from initlint.capture import capture_program  # noqa: E402
from initlint.load import from_instance  # noqa: E402
from initlint.measure import measure  # noqa: E402
from initlint.propagate import predict  # noqa: E402
from initlint.state import preserved  # noqa: E402


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def propagation(repeats: int) -> None:
    print("propagation (Linear+ReLU MLP, width 64): median of", repeats)
    print(f"{'depth':>6s} {'ops':>6s} {'capture s':>10s} {'predict s':>10s} {'us/op':>8s}")
    for depth in (10, 100, 1000):
        torch.manual_seed(0)
        model = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(64, 64), nn.ReLU())])
        target = from_instance(model, torch.randn(8, 64))
        t0 = time.perf_counter()
        graph, _ = capture_program(target)
        t_capture = time.perf_counter() - t0
        t = _timed(lambda: predict(graph, target.inputs, model=model), repeats)
        print(f"{depth:6d} {len(graph):6d} {t_capture:10.3f} {t:10.4f} {1e6 * t / len(graph):8.1f}")


def _bare(model: nn.Module, args: tuple, kwargs: dict, seed: int = 0) -> None:
    """One training step's forward and backward, as measure() runs it but without the probes."""
    with preserved(model), torch.enable_grad():
        torch.manual_seed(seed)
        model.train()
        args = tuple(a.detach().clone().requires_grad_(True) if torch.is_tensor(a) and a.is_floating_point() else a
                     for a in args)
        out = model(*args, **kwargs)
        outs = [t for t in torch.utils._pytree.tree_leaves(out.to_tuple() if hasattr(out, "to_tuple") else out)
                if torch.is_tensor(t) and t.is_floating_point() and t.requires_grad]
        gen = torch.Generator().manual_seed(seed + 1)
        loss = sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)
        leaves = [a for a in args if torch.is_tensor(a) and a.requires_grad]
        leaves += [p for p in model.parameters() if p.requires_grad]
        torch.autograd.grad(loss, leaves, allow_unused=True)


def measurement(names: list[str], repeats: int) -> None:
    print("\nmeasurement pass vs bare forward+backward (same model, batch, loss), interleaved, median of", repeats)
    print(f"{'model':26s} {'capture':7s} {'ops':>5s} {'bare ms':>9s} {'measure ms':>11s} {'ratio':>6s} "
          f"{'1st pass ms':>10s}")
    for name in names:
        model, inputs = _SPEED[name]() if name in _SPEED else SUITE[name]()
        target = from_instance(model, inputs)
        graph, program = capture_program(target)
        args, kwargs = tuple(target.inputs.args), dict(target.inputs.kwargs)
        bare, meas = [], []
        _bare(model, args, kwargs)  # warm-up
        t0 = time.perf_counter()
        measure(graph, program, "cpu")  # the first pass also instruments the program (code generation)
        first = time.perf_counter() - t0
        for _ in range(repeats):
            t0 = time.perf_counter()
            _bare(model, args, kwargs)
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            measure(graph, program, "cpu")
            meas.append(time.perf_counter() - t0)
        b, m = statistics.median(bare), statistics.median(meas)
        print(f"{name:26s} {graph.capture.value:7s} {len(graph):5d} {1e3 * b:9.1f} {1e3 * m:11.1f} {m / b:6.2f} "
              f"{1e3 * first:10.1f}")


def _mlp_wide():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(10) for m in (nn.Linear(1024, 1024), nn.ReLU())])
    return model, torch.randn(256, 1024)


def _resnet_batch64():
    model, _ = SUITE["resnet-bn"]()
    return model, torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))


_SPEED = {"mlp-10x1024-batch256": _mlp_wide, "resnet-bn-batch64": _resnet_batch64}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--models", nargs="*", default=["mlp-10x1024-batch256", "resnet-bn-batch64", "resnet-bn", "gpt2",
                                                      "mlp-relu-4-kaiming"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # a shared machine: one thread keeps the two timings comparable
    propagation(args.repeats)
    measurement(args.models, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
