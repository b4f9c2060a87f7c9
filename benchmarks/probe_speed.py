"""The cost of ``--probe``: the whole probe stage (the shared pass, every probe, the repairs on one copy and
their re-measurement) against a bare forward and backward pass at the probe's batch size, as a ratio measured
in one run.

    .venv/bin/python -m benchmarks.probe_speed [--repeat 5] [--device cpu] [--models resmlp,convnet,encoder]
                                               [--threads 1]

For each model the lint is done once (capture, propagation, rules); then, alternately, the probe stage and a
bare training step at the same inputs (``model(*x)``, the loss ``sum <y, r>``, ``autograd.grad`` with respect to
the parameters), ``--repeat`` times each after a warm-up. Medians; the ratio is what to compare across
machines. The issue's budget is 5x.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from initlint.capture import capture_program
from initlint.check import check
from initlint.load import from_instance
from initlint.probe import ProbeOptions, probe, resolve_device
from initlint.probes.runner import Runnable, capped
from initlint.propagate import propagate
from initlint.registry import discover

BUDGET = 5.0


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(self.fc2.weight, nonlinearity="linear")

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


def resmlp():
    """IL201: twelve unscaled residual blocks of width 1024 (the bundled example, wider)."""
    return nn.Sequential(*[Block(1024) for _ in range(12)], nn.Linear(1024, 10)), (torch.randn(32, 1024),)


def convnet():
    """IL102 and IL103: a depthwise conv with a fan-out init and a kernel-3 stride-2 transposed conv."""
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.Conv2d(64, 3, 3, padding=1),
    )
    nn.init.kaiming_normal_(model[2].weight, mode="fan_out", nonlinearity="relu")
    return model, (torch.randn(32, 3, 64, 64),)


def encoder():
    """IL204 and IL107: six deep-copied Post-LN nn.TransformerEncoderLayers (torch.export capture)."""
    layer = nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True, norm_first=False)
    return nn.TransformerEncoder(layer, 6, enable_nested_tensor=False), (torch.randn(32, 64, 256),)


def _example(cls, shape, **kw):
    def build():
        from initlint import examples as E

        return getattr(E, cls)(**kw), (torch.randn(*shape),)

    build.__doc__ = f"initlint.examples.{cls}({', '.join(f'{k}={v}' for k, v in kw.items())}) at {shape}"
    return build


MODELS = {"resmlp": resmlp, "convnet": convnet, "encoder": encoder,
          # the working-size defective examples of ``benchmarks.speed`` (its probe rows), by their findings
          "depthwise": _example("DepthwiseNet", (32, 3, 64, 64), channels=128),  # IL102, IL301, IL303
          "checkerboard": _example("CheckerboardGenerator", (32, 32, 1, 1)),  # IL103: the layer alone
          "dropout": _example("HandDropoutMLP", (32, 1024), width=1024)}  # IL206, IL303


def bare_step(model: nn.Module, args: tuple, device: torch.device) -> None:
    out = model(*args)
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(out.shape, generator=gen).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.autograd.grad((out * r).sum(), params)
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name: str, repeat: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model, args = MODELS[name]()
    target = from_instance(model, args)
    graph, program = capture_program(target)
    graph = propagate(graph, target.inputs, model=model)
    findings, _ = check(graph, discover())
    options = ProbeOptions(device=str(device), progress=False)
    # the bare step runs at the inputs the probe runs at (its caps applied), on a copy on the device
    run = capped(Runnable.of(program, graph), options.max_batch, options.max_spatial)
    twin = __import__("copy").deepcopy(model).to(device).train()
    bare_args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in run.inputs.args)

    def probing():
        probe(target, graph, findings, program=program, options=options)
        if device.type == "cuda":
            torch.cuda.synchronize()

    probing()
    bare_step(twin, bare_args, device)  # warm-ups
    probe_times, bare_times = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        probing()
        probe_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        bare_step(twin, bare_args, device)
        bare_times.append(time.perf_counter() - t)
    p, b = statistics.median(probe_times), statistics.median(bare_times)
    return {"model": name, "capture": program.capture.value, "findings": ",".join(sorted({f.code for f in findings})),
            "batch": tuple(run.inputs.args[0].shape), "probe_ms": 1e3 * p, "bare_ms": 1e3 * b, "ratio": p / b}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of: {', '.join(MODELS)}")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; benchmarks.speed uses 1)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device: {device}; medians of {args.repeat} runs; budget {BUDGET:g}x")
    print(f"{'model':12s} {'capture':7s} {'findings':24s} {'inputs':18s} {'probe ms':>9s} {'bare ms':>8s} {'ratio':>6s}")
    worst = 0.0
    for name in args.models.split(","):
        row = measure(name, args.repeat, device)
        worst = max(worst, row["ratio"]) if math.isfinite(row["ratio"]) else math.inf
        print(f"{row['model']:12s} {row['capture']:7s} {row['findings']:24s} {str(row['batch']):18s} "
              f"{row['probe_ms']:9.1f} {row['bare_ms']:8.1f} {row['ratio']:6.2f}")
    return 0 if worst <= BUDGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
