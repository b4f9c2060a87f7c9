"""IL202 unscaled-branch-sum."""

from __future__ import annotations

import math

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import Op, OpKind, Reduction
from initlint.patterns import (
    SCALE_NORMS, WEIGHT_LAYERS, Residual, branch_prenormalized, normalized_soon, projected_residual, residual, sig,
    stream_end, times, TRIVIAL,
)
from initlint.registry import rule

# Reported when the sum multiplies the branches' average variance by 1.5 or more and its output's variance is
# 1.5 or more times its input's: halfway between a scaled sum (x1) and the smallest unscaled one (two
# zero-mean branches, x2).
MIN_FACTOR = 1.5
# An error from a variance x100 (std x10) at one sum, as for the residual stream.
ERROR_GAIN = 100.0
_WORK = WEIGHT_LAYERS | {OpKind.ATTENTION, OpKind.MATMUL}
_SOURCES = frozenset({OpKind.PARAM, OpKind.FACTORY, OpKind.RANDOM})


@rule("IL202", "unscaled-branch-sum", applies_to={OpKind.ADD, OpKind.REDUCE}, severity=Severity.WARNING,
      needs_signals=True)
def unscaled_branch_sum(op: Op, graph: ModelGraph) -> Issue | None:
    """
    ## What it does
    Finds sums of N >= 2 parallel branches of one input, such as `f1(x) + f2(x) + f3(x)` (Inception- or
    multi-path-style, written with `+` or as `torch.stack(branches).sum(0)`), that are not scaled down, so the
    sum's variance is about N times its branches'.

    Each branch must contain a weight layer or attention, and none may feed another. Not findings: residual
    adds (`x + f(x)`, also with a one-layer projection shortcut: IL201's), sums of unrelated tensors (token and
    position embeddings), sums whose branches all end in a normalization (ResNet's downsampling block adds two
    BatchNorm outputs: the sum's scale is set by the norms, not by the init, and does not compound), and
    sums scaled by `1/sqrt(N)` or averaged. The variance engine gives the numbers: the sum's variance against
    its branches' average, and against the input's.

    ## Why is this bad?
    Independent zero-mean branches add their variances: N branches that each preserve the variance give N
    times the input's, and a stack of such blocks multiplies the signal by N per block. Multiplying the sum
    by `1/sqrt(N)` fixes it exactly for zero-mean branches. Branches that end in a ReLU have a positive mean
    that adds coherently, so their sum has a second moment of N (1 + (N - 1)/pi) times a branch's, and
    `1/sqrt(N)` leaves 1 + (N - 1)/pi: the fix printed divides by the square root of the predicted factor
    instead, which is exact for either.

    Measured (`measured-claims.md`, claim 6): N = 1, 2, 4, 8 zero-mean branches give 1.02, 2.01, 4.02, 8.01, and
    1.00 to 1.02 after `1/sqrt(N)`; ReLU-ending branches keep 1.33, 1.95, 3.22 after `1/sqrt(N)` for N = 2, 4, 8
    (1 + (N - 1)/pi = 1.32, 1.95, 3.23).

    The finding is reported when the sum multiplies its branches' average variance by 1.5 or more (between a
    scaled sum, 1, and two unscaled zero-mean branches, 2) and its input's by 1.5 or more (branches that each
    shrink the signal by N are not made worse by their sum). It is an `info` when a normalization follows the
    sum directly, and an error when the sum multiplies its input's variance by 100 or more (std x10).

    ## Example
    ```python
    import torch
    from torch import nn

    class MultiPath(nn.Module):
        def __init__(self, c=32):
            super().__init__()
            self.paths = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2) for k in (1, 3, 5, 7))
            for p in self.paths:
                nn.init.kaiming_normal_(p.weight, nonlinearity="linear")

        def forward(self, x):
            return sum(p(x) for p in self.paths)

    torch.manual_seed(0)
    model = nn.Sequential(MultiPath(), MultiPath(), nn.Conv2d(32, 10, 1))
    example_inputs = torch.randn(2, 32, 16, 16)
    ```

    ## Use instead
    ```python
    import math
    import torch
    from torch import nn

    class MultiPath(nn.Module):
        def __init__(self, c=32):
            super().__init__()
            self.paths = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2) for k in (1, 3, 5, 7))
            for p in self.paths:
                nn.init.kaiming_normal_(p.weight, nonlinearity="linear")

        def forward(self, x):
            return sum(p(x) for p in self.paths) / math.sqrt(len(self.paths))

    torch.manual_seed(0)
    model = nn.Sequential(MultiPath(), MultiPath(), nn.Conv2d(32, 10, 1))
    example_inputs = torch.randn(2, 32, 16, 16)
    ```

    ## References
    - Szegedy et al. 2015, "Going Deeper with Convolutions" (Inception)
    - Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural Networks" (ResNeXt)
    - Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward neural networks"
    """
    leaves = _stacked_sum(graph, op) if op.kind is OpKind.REDUCE else _add_tree(graph, op)
    if leaves is None or len(leaves) < 2:
        return None
    branches = [_strip(graph, leaf) for leaf in leaves]
    fork = _fork(graph, branches)
    if fork is None:
        return None
    upstream = [graph.ancestors(b) | {b.name} for b in branches]
    if any(b.name in other for i, b in enumerate(branches) for j, other in enumerate(upstream) if i != j):
        return None  # one branch feeds another: a chain, not parallel paths
    members = [(u & graph.descendants(fork)) for u in upstream]
    if any(not any(graph.op(n).kind in _WORK for n in m) for m in members):
        return None
    if all(branch_prenormalized(graph, Residual(op, fork, b), SCALE_NORMS) for b in branches):
        return None

    out = stream_end(graph, op, TRIVIAL)
    s_in, s_out = _second(graph, fork), _second(graph, out)
    seconds = [_second(graph, b) for b in branches]
    if not (s_in > 0.0 and s_out > 0.0 and all(s >= 0.0 for s in seconds)) or not sum(seconds) > 0.0:
        return None
    mean_branch = sum(seconds) / len(seconds)
    factor = s_out / mean_branch
    gain = s_out / s_in
    if factor < MIN_FACTOR or gain < MIN_FACTOR:
        return None

    n = len(branches)
    norms = normalized_soon(graph, out)
    severity = Severity.INFO if norms else (Severity.ERROR if gain >= ERROR_GAIN else Severity.WARNING)
    coherent = factor / n  # what 1/sqrt(N) would leave
    applied = math.sqrt(s_out / _second(graph, op)) if _second(graph, op) > 0.0 else 1.0
    where = f"`{op.module}`" if op.module else "the model"
    source = "the model's input" if fork.kind is OpKind.INPUT else f"`{fork.module or fork.name}`"
    if applied < 0.95:
        message = (f"{where} sums {n} parallel branches of {source} scaled by {sig(applied)}: variance still "
                   f"x{times(factor)} the branches' average, their positive means adding up")
    else:
        message = f"{where} sums {n} parallel branches of {source} unscaled: variance x{times(factor)} the branches' average"
        if coherent > 1.1:
            message += f" (x{n} for zero-mean branches; their positive means add up)"
    message += f", x{times(gain, 3)} from the input"
    if norms:
        message += f", then `{norms[0].module or norms[0].name}` normalizes it"
    scale = 1.0 / math.sqrt(factor)
    total = applied * scale
    naive = "" if coherent <= 1.1 or applied < 0.95 else f" (1/sqrt({n}) would leave x{times(coherent)})"
    terms = " + ".join(f"f{i + 1}(x)" for i in range(min(n, 4))) + (" + ..." if n > 4 else "")
    fix = Fix(
        summary=f"Multiply the sum of the branches by {sig(total)}{naive}",
        code=f"out = ({terms}) * {sig(total)}  # 1/sqrt({times(factor / applied**2, 3)}): the predicted factor",
    )
    return Issue(
        message=message,
        fix=fix,
        predicted={
            "branches": n,
            "factor": factor,
            "factor_per_branch": coherent,
            "gain": gain,
            "branch_second_moment_mean": mean_branch,
            "applied_scale": applied,
            "sum_scale": total,
        },
        severity=severity,
    )


def _second(graph: ModelGraph, op: Op) -> float:
    s = graph.signal(op)
    return s.forward.second if s is not None else float("nan")


def _add_tree(graph: ModelGraph, op: Op) -> list[Op] | None:
    """The operands of the largest tree of adds rooted at ``op`` (``a + b + c`` is two adds); ``None`` when
    ``op`` is itself inside such a tree, or is a residual add."""
    parents = graph.consumers(op)
    if len(parents) == 1 and parents[0].kind is OpKind.ADD and _inner(graph, parents[0], op):
        return None
    if residual(graph, op) is not None or projected_residual(graph, op) is not None:
        return None
    leaves: list[Op] = []
    stack = list(op.inputs[::-1])
    while stack:
        name = stack.pop()
        o = graph.op(name)
        if o.kind is OpKind.ADD and len(graph.consumers(o)) == 1 and _inner(graph, op, o):
            stack.extend(o.inputs[::-1])
        else:
            leaves.append(o)
    return leaves


def _inner(graph: ModelGraph, parent: Op, child: Op) -> bool:
    """Whether ``child``, an add feeding only ``parent``, belongs to ``parent``'s tree (a residual does not).

    ``proj(x) + f(x)`` alone is a ResNet downsampling block (IL201's); with a third branch of the same ``x``
    added, ``b1(x) + b2(x) + b3(x)``, it is a sum of three parallel branches (an Inception block)."""
    if residual(graph, child) is not None:
        return False
    res = projected_residual(graph, child)
    if res is None:
        return True
    floor = graph.position(res.skip)
    return any(res.skip.name in graph.ancestors_from(graph.op(n), floor) for n in parent.inputs if n != child.name)


def _stacked_sum(graph: ModelGraph, op: Op) -> list[Op] | None:
    """``torch.stack([...]).sum(0)``: the stacked tensors, when ``op`` sums over the stacking dimension."""
    p = op.params
    if p is None or p.kind is not Reduction.SUM or len(op.inputs) != 1:
        return None
    src = graph.op(op.inputs[0])
    if src.kind is not OpKind.CONCAT or src.params is None or not src.params.stack or not src.shape:
        return None
    rank = len(src.shape)
    if {d % rank for d in p.dims} != {src.params.dim % rank}:
        return None
    return [graph.op(n) for n in src.inputs]


def _strip(graph: ModelGraph, op: Op) -> Op:
    """A branch without its trailing reshapes, dropout and scales: what it computes before any scaling."""
    while op.kind in TRIVIAL:
        signals = [n for n in op.inputs if graph.op(n).kind not in _SOURCES]
        if len(signals) != 1:
            break
        op = graph.op(signals[0])
    return op



def _fork(graph: ModelGraph, branches: list[Op]) -> Op | None:
    """The last floating-point tensor every branch is computed from, when it is none of them."""
    common = None
    for b in branches:
        up = graph.ancestors(b)
        common = up if common is None else common & up
    names = {b.name for b in branches}
    candidates = [o for o in graph if common and o.name in common and o.name not in names
                  and o.kind not in _SOURCES and (o.dtype is None or o.dtype.startswith(("float", "bfloat")))]
    return candidates[-1] if candidates else None
