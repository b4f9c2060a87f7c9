"""Lint time against depth, and a model too large to materialize linted from the ``meta`` device.

    .venv/bin/python -m benchmarks.scale [--depths 10,100,1000] [--repeat 9] [--skip depth,meta] [--clock cpu]

1. Depth: an MLP (Linear-ReLU blocks) and a Pre-LN transformer (hand-written attention and MLP blocks) of 10,
   100 and 1000 blocks, each stage of the lint timed on its own (capture, propagation, every rule), cold (the
   memo caches emptied before each repeat, as a lint in a fresh process would find them). The time
   per op should be constant (linear time in depth): the spread, max/min - 1 over the depths, is printed
   against the 30% target, with each superlinear stage's growth exponent. A rule projected (from its own
   growth between the two previous depths) to take more than ``--budget`` seconds is not run at that depth.
2. Meta: a Llama-shaped transformer of about 6.7 billion parameters (d 4096, 32 layers, FFN 11008, vocab 32000)
   built on ``meta``, linted in a fresh process whose peak resident memory is reported (the weights alone would
   take 27 GB in float32). Which rules need real weights is measured, not declared: each rule's defective
   benchmark case (:mod:`benchmarks.cases`, fast subset) is built on ``meta`` and linted; a rule that finds its
   defect on the materialized model but not on ``meta`` needed the weights' values and was skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

SPREAD_TARGET = 0.30
# What the depth tables time with: wall time, or with ``--clock cpu`` this process's CPU time (the same on an idle
# machine, torch being held to one thread, and not inflated by other processes on a shared one).
CLOCK = [time.perf_counter]


# -- models ------------------------------------------------------------------------------------------------------


def mlp(blocks: int, d: int = 16):
    layers = []
    for _ in range(blocks):
        lin = nn.Linear(d, d)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers), torch.randn(4, d)


class Block(nn.Module):
    """Pre-LN block: hand-written multi-head attention and a GELU MLP, GPT-2's init."""

    def __init__(self, d: int, heads: int, ffn: int, norm=nn.LayerNorm):
        super().__init__()
        self.n1, self.n2 = norm(d), norm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.up, self.down = nn.Linear(d, ffn, bias=False), nn.Linear(ffn, d, bias=False)
        self.heads = heads

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(y)
        return x + self.down(F.gelu(self.up(self.n2(x))))


class Transformer(nn.Module):
    def __init__(self, blocks: int, d: int = 16, heads: int = 2, ffn: int = 32, vocab: int = 64, norm=nn.LayerNorm):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, ffn, norm) for _ in range(blocks))
        self.norm = norm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * blocks) if name.endswith(("proj.weight", "down.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, ids):
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def transformer(blocks: int):
    return Transformer(blocks), torch.randint(0, 64, (2, 8))


# -- depth -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthRow:
    family: str
    blocks: int
    ops: int
    stages: dict  # "capture" (load + capture), "propagate": seconds
    rules: dict  # code -> seconds; None: not run (projected beyond the budget)
    projected: dict  # code -> projected seconds, for the rules not run

    @property
    def seconds(self) -> float:
        return sum(self.stages.values()) + sum(v for v in self.rules.values() if v is not None)

    @property
    def complete(self) -> bool:
        return all(v is not None for v in self.rules.values())

    @property
    def per_op_us(self) -> float:
        return 1e6 * self.seconds / self.ops

    @property
    def engine_per_op_us(self) -> float:
        return 1e6 * sum(self.stages.values()) / self.ops


def _median_time(fn, repeat: int, cold: str = "initlint"):
    """The median time of ``repeat`` calls of ``fn``, each run cold (:func:`_cold`), and the last value."""
    from initlint.api import collector_paused

    times, value = [], None
    for _ in range(repeat):
        _cold(cold)
        with collector_paused():  # as a lint runs its stages
            t = CLOCK[0]()
            value = fn()
            times.append(CLOCK[0]() - t)
    return statistics.median(times), value


def _cold(prefix: str) -> None:
    """Empties the ``functools.lru_cache`` memos of the modules under ``prefix``, so that a timed run pays for what
    a lint computes in a fresh process rather than reading a previous repeat's results. (The softmax statistics
    are cached per logit variance: the median of three runs, two of them cached, at 10 and 100 blocks against one
    cold run at 1000 made propagation look quadratic in depth.)"""
    for name, module in list(sys.modules.items()):
        if name == prefix or name.startswith(prefix + "."):
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)) and getattr(value, "__module__", None) == name:
                    value.cache_clear()


def _rule_times(graph, rules, repeat: int, again) -> dict:
    """Each rule's median time over ``repeat`` runs of all of them, in order, on a graph just propagated, as in a
    lint: with the graph's memo of patterns (:attr:`~initlint.graph.ModelGraph.memo`) shared by the rules, and the
    caches as propagation leaves them. ``graph``: the one propagation just gave; ``again``: propagates anew
    (untimed) for each further run."""
    from initlint.api import collector_paused
    from initlint.check import check

    times: dict = {r.code: [] for r in rules}
    for i in range(repeat):
        if i:
            _cold("initlint")
            graph = again()
        with collector_paused():  # as a lint runs the rules
            for r in rules:
                t = CLOCK[0]()
                check(graph, [r])
                times[r.code].append(CLOCK[0]() - t)
    return {code: statistics.median(ts) for code, ts in times.items()}


def depth_row(family: str, blocks: int, repeat: int, previous: list[DepthRow] = (), budget: float = 60.0) -> DepthRow:
    """Every stage of a lint, each rule on its own. A rule whose time, extrapolated from the two previous depths
    by its own growth exponent, would exceed ``budget`` seconds is not run at this depth (its projection is kept)."""
    from initlint.capture import capture
    from initlint.load import from_instance
    from initlint.propagate import propagate
    from initlint.registry import discover

    torch.manual_seed(0)
    model, x = (mlp if family == "mlp" else transformer)(blocks)
    t_cap, captured = _median_time(lambda: capture(from_instance(model, x)), repeat)
    target = from_instance(model, x)
    t_prop, graph = _median_time(lambda: propagate(captured, target.inputs, model=model), repeat)
    rules, projected, run = {}, {}, []
    for r in discover():
        guess = _project(r.code, len(graph), previous)
        if guess is not None and guess > budget:
            rules[r.code], projected[r.code] = None, guess
        else:
            rules[r.code] = 0.0
            run.append(r)
    rules.update(_rule_times(graph, run, repeat, lambda: propagate(captured, target.inputs, model=model)))
    return DepthRow(family, blocks, len(graph), {"capture": t_cap, "propagate": t_prop}, rules, projected)


def exponent(small: DepthRow, big: DepthRow, key: str) -> float | None:
    """The growth exponent of a rule's (or a stage's) time between two depths: 1 is linear in the op count."""
    a = small.stages.get(key, small.rules.get(key))
    b = big.stages.get(key, big.rules.get(key))
    if a is None or b is None or a <= 1e-4 or b <= 1e-4:
        return None
    return math.log(b / a) / math.log(big.ops / small.ops)


def _project(code: str, ops: int, previous: list[DepthRow]) -> float | None:
    if len(previous) < 2:
        return None
    small, big = previous[-2], previous[-1]
    if big.rules.get(code) is None:
        return math.inf if code in big.projected else None
    e = exponent(small, big, code)
    return None if e is None else big.rules[code] * (ops / big.ops) ** max(e, 1.0)


def spread(rows: list[DepthRow], engine: bool = False) -> float:
    per_op = [r.engine_per_op_us if engine else r.per_op_us for r in rows]
    return max(per_op) / min(per_op) - 1


def depth_table(family: str, depths: list[int], repeat: int, budget: float) -> list[DepthRow]:
    rows: list[DepthRow] = []
    print(f"{'family':12s} {'blocks':>6s} {'ops':>6s} {'capture':>8s} {'propag.':>8s} {'rules':>8s} {'total s':>8s} "
          f"{'us/op':>7s}")
    depth_row(family, depths[0], 1)  # warm-up: first calls pay for imports and torch's lazy initialization
    for blocks in depths:
        row = depth_row(family, blocks, repeat if blocks < 1000 else 1, rows, budget)
        rows.append(row)
        rules = sum(v for v in row.rules.values() if v is not None)
        mark = "" if row.complete else f"  (+{len(row.projected)} rules not run, projected " \
            f"{', '.join(f'{c} {_dur(v)}' for c, v in sorted(row.projected.items()))})"
        print(f"{family:12s} {blocks:6d} {row.ops:6d} {row.stages['capture']:8.2f} {row.stages['propagate']:8.2f} "
              f"{rules:8.2f} {row.seconds:8.2f} {row.per_op_us:7.0f}{mark}", flush=True)
    first, last = rows[0], rows[-1]
    growth = {k: exponent(rows[-2] if len(rows) > 1 else first, last, k) for k in [*last.stages, *last.rules]}
    slow = {k: e for k, e in growth.items() if e is not None and e > 1.3}
    print(f"{family}: time per op spread {spread(rows):.0%} over {', '.join(map(str, depths))} blocks (capture + "
          f"propagation alone: {spread(rows, engine=True):.0%}), target <= {SPREAD_TARGET:.0%}"
          + ("" if last.complete else "; the largest depth is missing the rules not run"))
    if slow:
        print("  superlinear (time ~ ops^e between the two largest depths run): "
              + ", ".join(f"{k} e={e:.1f}" for k, e in sorted(slow.items(), key=lambda kv: -kv[1])))
    print()
    return rows


def _dur(s: float) -> str:
    return "inf" if s == math.inf else f"{s:.0f} s" if s < 3600 else f"{s / 3600:.1f} h"


# -- meta --------------------------------------------------------------------------------------------------------

LLAMA_7B = dict(blocks=32, d=4096, heads=32, ffn=11008, vocab=32000)


def _meta_child(spec: dict) -> dict:
    """Runs in a fresh process: build on meta, lint, report what happened and the peak memory."""
    from initlint import lint

    t0 = time.perf_counter()
    with torch.device("meta"):
        model = Transformer(spec["blocks"], spec["d"], spec["heads"], spec["ffn"], spec["vocab"])
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, spec["vocab"], (1, 16), device="meta")
    t1 = time.perf_counter()
    target = lint(model, ids).targets[0]
    t2 = time.perf_counter()
    return {"params": params, "build_s": t1 - t0, "lint_s": t2 - t1, "capture": target.capture, "ops": target.ops,
            "error": None if target.error is None else target.error.message, "notes": list(target.notes),
            "findings": [[f.code, f.severity.value, f.module, f.message] for f in target.findings],
            "maxrss_mb": peak_mb()}


def peak_mb() -> float:
    """This process's peak resident memory. ``VmHWM`` where Linux has it: ``ru_maxrss`` survives fork + exec, so a
    child started by a large parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def meta_model(spec: dict | None = None) -> dict:
    spec = spec or LLAMA_7B
    code = ("import json, sys; from benchmarks.scale import _meta_child; "
            f"print('RESULT' + json.dumps(_meta_child({spec!r})))")
    base = ("import torch, initlint.api, initlint.capture, initlint.propagate, initlint.rules; "
            "from benchmarks.scale import peak_mb; print('RESULT' + str(peak_mb()))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for key, src in (("result", code), ("baseline_mb", base)):
        proc = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, cwd=root)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
        if line is None:
            raise RuntimeError(f"meta lint failed: {proc.stderr[-2000:]}")
        out[key] = json.loads(line[6:])
    return {**out["result"], "baseline_mb": out["baseline_mb"]}


def weight_dependence() -> dict[str, tuple[int, int]]:
    """Per rule: (defective cases found when built on ``meta``, defective cases) over the fast subset's pairs,
    found when materialized (tests/bench). 0 found: the rule needs the weights' values."""
    from benchmarks.cases import FAST
    from benchmarks.report import installed
    from initlint import lint
    from initlint.findings import Severity

    names = installed()
    out: dict[str, tuple[int, int]] = {}
    for case in FAST:
        if case.fixed or case.rule not in names:
            continue
        found = False
        with torch.device("meta"):
            try:
                model, inputs = case.build()
            except Exception:  # noqa: BLE001 - a model that cannot be built on meta is no evidence either way
                continue
        report = lint(model, inputs, select=[case.rule])
        found = any(f.severity.rank >= Severity.WARNING.rank for f in report.findings)
        hits, total = out.get(case.rule, (0, 0))
        out[case.rule] = (hits + found, total + 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="10,100,1000")
    # 9: with medians of 3 the ms-sized 10-block rows swung by a third between runs on this shared machine
    ap.add_argument("--repeat", type=int, default=9, help="runs per stage below 1000 blocks (medians)")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds: a rule projected to take longer at a depth is not run there (default 60)")
    ap.add_argument("--skip", default="", help="parts to skip: depth,meta")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time the depth tables by wall time (default) or by this process's CPU time")
    args = ap.parse_args(argv)
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)
    skip = set(args.skip.split(","))
    if "depth" not in skip:
        depths = [int(b) for b in args.depths.split(",")]
        for family in ("mlp", "transformer"):
            depth_table(family, depths, args.repeat, args.budget)
    if "meta" not in skip:
        m = meta_model()
        print(f"meta: {m['params'] / 1e9:.2f}B parameters, built in {m['build_s']:.1f} s, linted in {m['lint_s']:.1f} s "
              f"({m['capture']}, {m['ops']} ops), peak memory {m['maxrss_mb']:.0f} MB "
              f"(initlint and torch imported alone: {m['baseline_mb']:.0f} MB; float32 weights: "
              f"{m['params'] * 4 / 1e9:.0f} GB)")
        if m["error"]:
            print(f"  error: {m['error']}")
        for note in m["notes"]:
            print(f"  note: {note}")
        for code, sev, module, msg in m["findings"]:
            print(f"  {code} {sev} `{module}`: {msg}")
        dep = weight_dependence()
        print("rules that need real weights (none of their defective cases found on meta, skipped): "
              + ", ".join(c for c, (hit, _) in sorted(dep.items()) if hit == 0))
        print("rules that work from the structure alone (every case found on meta): "
              + ", ".join(c for c, (hit, n) in sorted(dep.items()) if hit == n))
        partly = {c: v for c, v in sorted(dep.items()) if 0 < v[0] < v[1]}
        if partly:
            print("rules that find some of their cases on meta: "
                  + ", ".join(f"{c} ({hit}/{n})" for c, (hit, n) in partly.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
