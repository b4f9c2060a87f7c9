"""initlint's cost as ratios to what it builds on, all measured in one run.

    .venv/bin/python -m benchmarks.speed [--repeat 5] [--models resnet,gpt2] [--startup-repeat 5] [--clock cpu]

1. Static lint (load + capture + graph + propagation + every rule, ``initlint.lint``) against the bare capture
   of the same model: ``torch.fx.symbolic_trace`` + ``ShapeProp`` when initlint captured with fx, a bare
   ``torch.export.export(strict=False)`` when it used torch.export. Target: <= 1.5x.
2. The measurement pass (``--signals``, :func:`initlint.measure.measure`) on the same models, and the probes
   (the probe stage alone, as ``lint(probe=True)`` runs it: confirming every finding and verifying its fix on a
   repaired copy) on the defective side of the fast benchmark pairs, where there are findings to probe, and on
   five defective models of a working size, each against one bare forward + backward of the model (training
   mode, a random-projection loss, ``torch.autograd.grad`` over inputs and parameters, as the measurement does)
   on the whole example input. Target for the probes: <= 3x. Beside each probe ratio, in the same run: a stage
   made of nothing but what verifying a fix takes at the example's size (copy the model, one bare step on it and
   one on the copy). The probe stage runs below it only where it cuts the inputs, skips the weights' gradients
   or runs no backward (no finding reads a gradient).
3. CLI start-up: ``initlint`` linting a one-block, 8-wide model end to end, and ``initlint --version``, against
   ``python -c "import torch"``, each a fresh process. Target: <= 1.3x.

Timings are medians of ``--repeat`` runs after one warm-up, the two sides of a ratio interleaved run by run so
that load from other processes on this shared machine hits both alike. The ratios are what to compare across
machines, not the milliseconds.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

TARGETS = {"lint": 1.5, "probe": 3.0, "startup": 1.3}
# What the in-process ratios time with: wall time, or with ``--clock cpu`` this process's CPU time (the same on an
# idle machine with torch on one thread; steadier while other jobs compete for the cores). Start-up is wall time.
CLOCK = [time.perf_counter]
TINY = "initlint.examples:ScaledResidualMLP(depth=1, width=8)"


@dataclass(frozen=True)
class Ratio:
    name: str
    what: str  # "lint", "measure", "probe", "startup", "version"
    ours: float  # seconds, median
    base: float  # seconds, median
    detail: str = ""
    # probes only: the repaired copy (``repairs.twin``) and two bare steps, one on the model and one on the copy,
    # as a ratio to one step: what verifying a fix takes at the example's size, nothing measured
    two_steps: float | None = None

    @property
    def ratio(self) -> float:
        return self.ours / self.base


def cold() -> None:
    """Forget what a previous lint left in initlint's memos (activation gains, softmax statistics, the Gaussian
    grid, class locations), so that a timed lint pays what one lint in a fresh process pays. The rules'
    discovery stays cached: a process pays it once, in the start-up ratio."""
    from initlint import sources

    sources._CLASS_LOCATIONS.clear()
    for name, module in list(sys.modules.items()):
        if name != "initlint" and not name.startswith("initlint."):
            continue
        for value in list(vars(module).values()):
            if getattr(value, "__module__", None) == name and callable(getattr(value, "cache_clear", None)):
                if getattr(value, "__name__", "") != "_discover":
                    value.cache_clear()


def paired(ours: Callable[[], object], base: Callable[[], object], repeat: int,
           reset: Callable[[], None] | None = None) -> tuple[float, float]:
    """Medians of ``repeat`` interleaved runs of each, after one warm-up of each; ``reset`` runs, untimed, before
    each run of ``ours``."""
    ours()
    base()
    a, b = [], []
    for _ in range(repeat):
        if reset is not None:
            reset()
        clock = CLOCK[0]
        t = clock()
        ours()
        a.append(clock() - t)
        t = clock()
        base()
        b.append(clock() - t)
    return statistics.median(a), statistics.median(b)


# -- bare baselines ------------------------------------------------------------------------------------------------


def _args(inputs) -> tuple[tuple, dict]:
    if isinstance(inputs, dict):
        return (), dict(inputs)
    return (inputs if isinstance(inputs, tuple) else (inputs,)), {}


def bare_fx(model, inputs) -> None:
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    gm = torch.fx.symbolic_trace(model)
    args, _ = _args(inputs)
    with torch.no_grad():
        ShapeProp(gm).propagate(*args)


def bare_export(model, inputs) -> None:
    import torch

    args, kwargs = _args(inputs)
    torch.export.export(model, args, kwargs, strict=False)


def _tensors(value) -> list:
    import torch
    from torch.utils import _pytree as pytree

    if hasattr(value, "to_tuple"):
        value = value.to_tuple()
    return [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def forward_backward(model, inputs) -> Callable[[], None]:
    """One training-mode forward and backward on a copy of ``model``; nothing of the original is touched."""
    import torch

    net = copy.deepcopy(model).train()
    args, kwargs = _args(inputs)
    args = tuple(a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point()
                 else a for a in args)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    leaves += [p for p in net.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)

    def run() -> None:
        outs = [t for t in _tensors(net(*args, **kwargs)) if t.is_floating_point() and t.requires_grad]
        loss = sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)
        torch.autograd.grad(loss, leaves, allow_unused=True)

    return run


# -- the three ratios --------------------------------------------------------------------------------------------


def stages(model, inputs, repeat: int) -> dict[str, float]:
    """Median seconds of each stage ``initlint.lint`` runs: load, capture, propagate, rules."""
    from initlint.api import collector_paused
    from initlint.capture import capture
    from initlint.check import check
    from initlint.load import from_instance
    from initlint.propagate import propagate
    from initlint.registry import discover

    rules = discover()
    times: dict[str, list[float]] = {"load": [], "capture": [], "propagate": [], "rules": []}
    for _ in range(repeat + 1):
        cold()
        clock = CLOCK[0]
        t0 = clock()
        target = from_instance(model, inputs)
        t1 = clock()
        with collector_paused():  # as lint runs the three
            graph = capture(target)
            t2 = clock()
            graph = propagate(graph, target.inputs, model=target.model)
            t3 = clock()
            check(graph, rules)
            t4 = clock()
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[k].append(v)
    return {k: statistics.median(v[1:]) for k, v in times.items()}  # the first run warms up


def lint_ratio(name: str, build: Callable, repeat: int) -> Ratio:
    from initlint import lint

    model, inputs = build()
    report = lint(model, inputs)
    t = report.targets[0]
    if t.error is not None:
        raise RuntimeError(f"{name}: {t.error.message}")
    bare = bare_fx if t.capture == "fx" else bare_export
    ours, base = paired(lambda: lint(model, inputs), lambda: bare(model, inputs), repeat, reset=cold)
    parts = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in stages(model, inputs, repeat).items())
    return Ratio(name, "lint", ours, base, f"{t.capture}, {t.ops} ops; ms: {parts}")


def measure_ratio(name: str, build: Callable, repeat: int) -> Ratio:
    from initlint.capture import capture_program
    from initlint.load import from_instance
    from initlint.measure import measure

    model, inputs = build()
    graph, program = capture_program(from_instance(model, inputs))
    ours, base = paired(lambda: measure(graph, program, "cpu"), forward_backward(model, inputs), repeat)
    return Ratio(name, "measure", ours, base, f"{graph.capture.value}, {len(graph)} ops")


def probe_ratio(name: str, build: Callable, repeat: int) -> Ratio | None:
    """The probe stage's own cost: ``initlint.probe.probe`` on the findings of a fresh lint, timed alone (as
    ``lint(probe=True)`` runs it), or None when probes are not installed. Timing the stage itself, not the
    difference of two lints' medians: on export-captured models the lint's own spread is larger than the stage."""
    from benchmarks.report import probe_available
    from initlint.capture import capture_program
    from initlint.check import check
    from initlint.load import from_instance
    from initlint.probe import ProbeOptions, probe
    from initlint.probes import repairs
    from initlint.propagate import propagate
    from initlint.registry import discover

    if not probe_available():
        return None
    model, inputs = build()
    rules = discover()

    def stage() -> float:
        cold()
        loaded = from_instance(model, inputs)
        graph, program = capture_program(loaded)
        graph = propagate(graph, loaded.inputs, model=loaded.model)
        findings, _ = check(graph, rules)
        clock = CLOCK[0]
        t = clock()
        probe(loaded, graph, findings, program=program, options=ProbeOptions(), rules=rules)
        return clock() - t

    step = forward_backward(model, inputs)
    stage()
    step()
    repairs.twin(model)
    ours, base, copies = [], [], []
    for _ in range(repeat):
        ours.append(stage())
        clock = CLOCK[0]
        t = clock()
        step()
        base.append(clock() - t)
        t = clock()
        repairs.twin(model)
        copies.append(clock() - t)
    bare = statistics.median(base)
    two = 2 + statistics.median(copies) / bare
    return Ratio(name, "probe", statistics.median(ours), bare, f"probe stage alone; copy + 2 steps {two:.2f}x", two)


def _bin() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "initlint")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "initlint"]


def _wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed


def startup(repeat: int) -> list[Ratio]:
    """Fresh processes: ``initlint TINY`` and ``initlint --version`` against ``python -c "import torch"``."""
    torch_cmd = [sys.executable, "-c", "import torch"]
    lint_cmd = [*_bin(), TINY]
    version_cmd = [*_bin(), "--version"]
    for cmd in (torch_cmd, lint_cmd, version_cmd):  # warm the file cache
        _wall(cmd)
    runs: dict[str, list[float]] = {"torch": [], "lint": [], "version": []}
    for _ in range(repeat):
        runs["torch"].append(_wall(torch_cmd))
        runs["lint"].append(_wall(lint_cmd))
        runs["version"].append(_wall(version_cmd))
    base = statistics.median(runs["torch"])
    return [Ratio("initlint TINY", "startup", statistics.median(runs["lint"]), base, TINY),
            Ratio("initlint --version", "version", statistics.median(runs["version"]), base, "no torch import")]


CI_MODELS = ("resnet", "unet", "lstm")  # fx-captured replicas: fractions of a second each
# Probes run only where there are findings: their cost is measured on the defective side of benchmark pairs.
CI_PROBE_CASES = ("IL101/sequential/defective", "IL201/sequential-plus/defective", "IL303/sequential-default/defective")


def probe_cases(names: Sequence[str] | None = None) -> dict[str, Callable]:
    """Defective benchmark cases by name: ``names``, or the first of every rule."""
    from benchmarks.cases import CASES

    out: dict[str, Callable] = {}
    for c in CASES:
        if not c.fixed and c.rule and (c.name in names if names is not None
                                       else not any(k.startswith(c.rule + "/") for k in out)):
            out[c.name] = c.build
    return out


def sized_defects() -> dict[str, Callable]:
    """Defective models at a working size, batch 32 (the probes' own batch cap, so both sides see the same
    batch): a bare forward + backward takes tens of milliseconds, and the probes' fixed costs no longer dominate."""
    import torch

    from initlint import examples as E

    def make(cls, shape, **kw):
        def build():
            torch.manual_seed(0)
            return cls(**kw), torch.randn(*shape)

        return build

    return {
        "ResidualMLP(12 x 1024)": make(E.ResidualMLP, (32, 1024), depth=12, width=1024),
        "DepthwiseNet(128 ch, 64x64)": make(E.DepthwiseNet, (32, 3, 64, 64), channels=128),
        "CheckerboardGenerator": make(E.CheckerboardGenerator, (32, 32, 1, 1)),
        "PostLNEncoder(256 x 6)": make(E.PostLNEncoder, (32, 64, 256), d_model=256),
        "HandDropoutMLP(1024)": make(E.HandDropoutMLP, (32, 1024), width=1024),
    }


def ci(repeat: int = 7, startup_repeat: int = 3) -> dict[str, float | None]:
    """The ratios the test suite checks: medians over :data:`CI_MODELS` and :data:`CI_PROBE_CASES` (start-up:
    one value)."""
    models = builders(list(CI_MODELS))
    out: dict[str, float | None] = {}
    for what, fn, on in (("lint", lint_ratio, models), ("measure", measure_ratio, models),
                         ("probe", probe_ratio, probe_cases(CI_PROBE_CASES))):
        rows = [r for r in (fn(n, b, repeat) for n, b in on.items()) if r is not None]
        out[what] = statistics.median(r.ratio for r in rows) if rows else None
    out["startup"] = startup(startup_repeat)[0].ratio
    return out


def builders(names: list[str]) -> dict[str, Callable]:
    import real_models as R

    return {n: R.ALL[n] for n in names}


def _line(r: Ratio) -> str:
    return f"{r.name[:34]:34s} {r.what:8s} {r.ours * 1e3:10.1f} {r.base * 1e3:10.1f} {r.ratio:7.2f}  {r.detail}"


def main(argv=None) -> int:
    import real_models as R

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--startup-repeat", type=int, default=5)
    ap.add_argument("--models", default=",".join(R.ALL), help=f"subset of: {', '.join(R.ALL)}")
    ap.add_argument("--skip", default="", help="parts to skip: lint,measure,probe,startup")
    ap.add_argument("--ci", action="store_true", help=f"only the subset the test suite checks ({', '.join(CI_MODELS)})")
    ap.add_argument("--record", action="store_true", help="with --ci: write the ratios to benchmarks/baseline.json")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time the in-process ratios by wall time or by this process's CPU time")
    args = ap.parse_args(argv)
    import torch

    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)
    if args.ci:
        ratios = ci()
        print("\n".join(f"{k}: {'-' if v is None else f'{v:.2f}x'}" for k, v in ratios.items()))
        if args.record:
            from benchmarks import baseline

            baseline.record("speed", ratios)
        return 0
    skip = set(args.skip.split(","))
    models = builders(args.models.split(","))
    print(f"{'model':34s} {'what':8s} {'ours ms':>10s} {'bare ms':>10s} {'ratio':>7s}")
    summary = []
    parts = (("lint", "lint", lint_ratio, models), ("measure", "measure", measure_ratio, models),
             ("probe", "probe (benchmark cases)", probe_ratio, probe_cases()),
             ("probe", "probe (working size)", probe_ratio, sized_defects()))
    for what, label, fn, on in parts:
        if what in skip:
            continue
        rows = [r for r in (fn(n, b, args.repeat) for n, b in on.items()) if r is not None]
        for r in rows:
            print(_line(r), flush=True)
        if rows:
            ratios = [r.ratio for r in rows]
            target = TARGETS.get(what)
            twos = [r.two_steps for r in rows if r.two_steps is not None]
            summary.append(f"{label}: median {statistics.median(ratios):.2f}x, max {max(ratios):.2f}x "
                           f"({max(rows, key=lambda r: r.ratio).name})" + (f", target <= {target}x" if target else "")
                           + (f"; the copy and two bare steps: median {statistics.median(twos):.2f}x"
                              if twos else ""))
        elif what == "probe":
            summary.append(f"{label}: the probe stage is not installed")
    if "startup" not in skip:
        for r in startup(args.startup_repeat):
            print(_line(r), flush=True)
            summary.append(f"{r.name}: {r.ratio:.2f}x `python -c \"import torch\"` ({r.ours:.2f} s vs {r.base:.2f} s)"
                           + (f", target <= {TARGETS['startup']}x" if r.what == "startup" else ""))
    print("\n" + "\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
