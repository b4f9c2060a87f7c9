"""IL201 unscaled-residual."""

from __future__ import annotations

import math

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import Op, OpKind
from initlint.patterns import (
    SCALE_NORMS, WEIGHT_LAYERS, Residual, branch_ops, branch_prenormalized, normalized_soon, projected_residual,
    residual, sig, stream_end, stream_root, times,
)
from initlint.registry import rule

# Variance growth over a chain of residual adds from which it is reported. Branches scaled so that their
# variances sum to O(1) over the chain (Fixup, T-Fixup, DeepNet: about 1/L each) give (1 + c/L)^L <= e^c, 2.7 for
# c = 1; 4 (the stream's std doubles) leaves those alone and catches two adds of branches as strong as their skip.
WARN_GROWTH = 4.0
# From here the chain is an error: the stream's std is 10x its input's, a scale nothing after it was initialized for.
ERROR_GROWTH = 100.0
# What the stream passes through between one residual add and the next skip: reshapes, dropout, scales (the
# 1/sqrt(2) of a scaled sum, DeepNorm's alpha) and the ReLU after the add of a ResNet block without norms.
# A branch that does work: a residual block's branch has a learned layer or attention. `x + 0.044715 * x**3`
# inside a tanh-GELU is an add of x and a function of x, not a block.
_WORK = WEIGHT_LAYERS | {OpKind.ATTENTION, OpKind.MATMUL}


@rule("IL201", "unscaled-residual", severity=Severity.WARNING, needs_signals=True)
def unscaled_residual(graph: ModelGraph) -> list[Issue]:
    """
    ## What it does
    Finds chains of residual adds `x + f(x)` whose branches carry a share of the stream's own variance, with
    no normalization in the branches or between the adds, so that the residual stream grows geometrically.

    A residual add is `x + f(x)`, or `proj(x) + f(x)` with a one-layer projection shortcut as in ResNet's
    downsampling blocks, where `f` contains a weight layer or attention. A parallel block (GPT-J, PaLM),
    `x + attn(x) + mlp(x)`, is two adds of branches of the same `x`: both count. Adds follow each other in a chain when
    the stream goes from one to the next through reshapes, dropout, scales or an activation. The rule reads the
    variance engine's predictions: the stream's second moment where the chain starts and where it ends.

    Not findings, by construction:

    - branches with a normalization on every path from the skip into them: Pre-LN `x + f(LN(x))` and
      ResNet's BatchNorm-in-branch blocks. Their branch has a fixed scale whatever the stream's, so the stream
      grows linearly (1 + L), not geometrically;
    - zero-initialized or scaled branches (Fixup, SkipInit, ReZero, LayerScale) and scaled sums
      (`(x + f(x)) / sqrt(2)`): the engine predicts their growth, which stays under the threshold.

    ## Why is this bad?
    Independent branches add their variances. A branch as strong as its input doubles the stream at every add,
    so L adds multiply its variance by 2^L, and by (1 + g)^L for a branch of relative variance g. The signal
    that reaches the output is then dominated by the last blocks, activations and gradients leave the range the
    init was chosen for, and mixed precision overflows early (De & Smith 2020; Zhang et al. 2019).

    Measured (`measured-claims.md`, claim 5): with a variance-preserving branch, 12 adds give 4089 (2^12 =
    4096 predicted); scaling each sum by 1/sqrt(2) keeps 0.998; Pre-LN `x + f(LN(x))` grows to 12.96 (1 + L,
    linear, not reported). A branch Linear-ReLU-Linear with Xavier on both layers has gain 1/2, so the stream
    grows as 1.5^L, not 2^L. Over 10 adds at width 512 the engine predicts 57.8 and forward passes measure 52.9
    to 64.5 over 5 seeds (mean 59.9); with Kaiming on both (gain 1) 1029 predicted, 853 to 1268 measured (mean
    1124; 2^10 = 1024). On the ResNet replica with its BatchNorms removed (widths 16 to 64), the engine
    predicts x25 over its 6 adds where a forward pass measures x69 (x13.7 against x20.2 at widths 64 to 256):
    at narrow widths the per-channel offsets the convs build up are under-counted, so the printed growth is a
    lower bound there.

    The chain is reported from a total growth of 4 (the stream's std doubles), which leaves alone branches
    scaled so that their variances sum to O(1) (Fixup and DeepNet-like scalings of about 1/L per branch give at
    most e = 2.7), and is an error from 100 (std x10), a scale that nothing after the chain was initialized
    for. It is an `info` when a normalization follows the chain's output, directly or after the one linear or
    conv layer it feeds: the growth is then removed from the forward pass (the last blocks still dominate it).

    ## Example
    ```python
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
            nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
            nn.init.kaiming_normal_(self.fc2.weight, nonlinearity="linear")

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    model = nn.Sequential(*[Block(256) for _ in range(10)])
    example_inputs = torch.randn(64, 256)
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
            nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
            nn.init.zeros_(self.fc2.weight)  # SkipInit: each block starts as the identity
            nn.init.zeros_(self.fc2.bias)

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    model = nn.Sequential(*[Block(256) for _ in range(10)])
    example_inputs = torch.randn(64, 256)
    ```
    Or keep the init and scale each sum, `(x + f(x)) * 0.707` for a branch as strong as its input
    (1/sqrt(1 + g) in general: the fix prints it for the model), or normalize the branch's input (Pre-LN).

    ## References
    - De & Smith 2020, "Batch Normalization Biases Residual Blocks Towards the Identity Function in Deep
      Networks" (SkipInit)
    - Zhang, Dauphin & Ma 2019, "Fixup Initialization: Residual Learning Without Normalization"
    - Bachlechner et al. 2021, "ReZero is All You Need"; Touvron et al. 2021, "Going deeper with Image
      Transformers" (LayerScale)
    """
    issues = []
    for chain in residual_chains(graph):
        issue = _chain_issue(graph, chain)
        if issue is not None:
            issues.append(issue)
    return issues


def residual_chains(graph: ModelGraph) -> list[list[Residual]]:
    """The unnormalized residual blocks with work in their branch, in chains along the stream, each in graph
    order. Shared with the rule's probe, which measures the chain a finding names."""
    key = ("residual_chains",)
    if key in graph.memo:
        return graph.memo[key]
    blocks: dict[str, Residual] = {}
    identity: dict[str, Residual] = {}  # the blocks whose skip is the stream itself, not a projection of it
    extends: dict[str, str] = {}  # a parallel block's second add -> its first
    for op in graph.of_kind(OpKind.ADD):
        res = residual(graph, op)
        plain = res is not None
        if res is None:
            res = projected_residual(graph, op)
        if res is None:
            res, first = _parallel(graph, op, identity)
            if res is None:
                continue
            extends[op.name] = first
        if branch_prenormalized(graph, res, SCALE_NORMS):
            continue
        if any(graph.op(n).kind in _WORK for n in branch_ops(graph, res)):
            blocks[op.name] = res
            if plain:
                identity[op.name] = res
    chains = [[blocks[name] for name in chain] for chain in _chains(graph, blocks, extends)]
    graph.memo[key] = chains
    return chains


def _parallel(graph: ModelGraph, op: Op, identity: dict[str, Residual]) -> tuple[Residual | None, str]:
    """A parallel block's second add, ``(x + f(x)) + g(x)`` (GPT-J, PaLM), as the residual ``x + g(x)``.

    The first add ``x + f(x)`` is a residual with an identity skip (a projection shortcut's sum plus a third
    branch is an Inception block, IL202's); the second adds another branch of the same ``x`` to it, so the
    stream takes both branches' variance in one block. Returned with the first add's name, which it continues.
    """
    if len(op.inputs) != 2:
        return None, ""
    for first, other in (op.inputs, op.inputs[::-1]):
        res = identity.get(first)
        if res is None or graph.op(other).kind is OpKind.PARAM:
            continue
        upstream = graph.ancestors_from(graph.op(other), graph.position(res.skip.name))
        if res.skip.name in upstream and first not in upstream:
            return Residual(op, res.skip, graph.op(other)), first
    return None, ""


def _chains(graph: ModelGraph, blocks: dict[str, Residual], extends: dict[str, str]) -> list[list[str]]:
    """The residual adds grouped into chains along the stream, each in graph order."""
    after: dict[str, str] = {}
    for name, res in blocks.items():  # graph order: the first add that continues a stream takes it
        root = extends.get(name) or stream_root(graph, res.skip)
        if root in blocks and root not in after:
            after[root] = name
    continued = set(after.values())
    starts = [name for name in blocks if name not in continued]
    chains = []
    for start in starts:
        chain = [start]
        while chain[-1] in after:
            chain.append(after[chain[-1]])
        chains.append(chain)
    return chains


def _second(graph: ModelGraph, op: Op) -> float:
    s = graph.signal(op)
    return s.forward.second if s is not None else float("nan")


def _chain_issue(graph: ModelGraph, chain: list[Residual]) -> Issue | None:
    start = _second(graph, chain[0].skip)
    end_op = stream_end(graph, chain[-1].add)
    end = _second(graph, end_op)
    if not (start > 0.0 and math.isfinite(end)):
        return None
    growth = end / start
    if growth < WARN_GROWTH:
        return None
    n = len(chain)
    per_add = growth ** (1.0 / n)
    strength = sum(_second(graph, r.branch) / max(_second(graph, r.skip), 1e-300) for r in chain) / n
    norms = normalized_soon(graph, end_op)
    if norms:
        severity = Severity.INFO
    else:
        severity = Severity.ERROR if growth >= ERROR_GROWTH else Severity.WARNING

    first, last = chain[0].add, chain[-1].add
    where = f"`{first.module}`" if first.module == last.module else f"`{first.module}` to `{last.module}`"
    if not first.module:
        where = "the model"
    adds = f"{n} residual adds" if n > 1 else "a residual add"
    message = (
        f"{where}: {adds} with unscaled branches (branch/skip variance {times(strength)}): residual-stream "
        f"variance x{times(per_add)} per add, x{times(growth, 3)} over {n} add{'s' if n > 1 else ''}"
    )
    if norms:
        message += f", then `{norms[0].module or norms[0].name}` normalizes it"

    scale = 1.0 / math.sqrt(per_add)
    params = _last_layer_params(graph, chain)
    code = ""
    if params:
        code = ("# SkipInit: the last layer of each branch starts at zero\n"
                + _zero_init_code(params))
    code += (f"# or keep the init and scale each sum in forward, by 1/sqrt({times(per_add, 3)}):\n"
             f"x = (x + branch(x)) * {sig(scale, 3)}")
    fix = Fix(
        summary=(f"Zero-initialize the last layer of each branch, or scale each residual sum by {sig(scale, 3)}"
                 if params else f"Scale each residual sum by {sig(scale, 3)}"),
        code=code,
    )
    return Issue(
        message=message,
        fix=fix,
        predicted={
            "adds": n,
            "branch_skip_variance_ratio": strength,
            "growth_per_add": per_add,
            "growth": growth,
            "stream_second_moment_start": start,
            "stream_second_moment_end": end,
            "sum_scale": scale,
        },
        severity=severity,
        op=first.name,
    )


def _last_layer_params(graph: ModelGraph, chain: list[Residual]) -> list[list[str]]:
    """The weight and bias of the last weight layer of each branch, when every branch has one."""
    found = []
    for res in chain:
        members = branch_ops(graph, res)
        layers = [op for op in graph if op.name in members and op.kind in (OpKind.LINEAR, OpKind.CONV)]
        if not layers or layers[-1].weight is None:
            return []
        last = layers[-1]
        found.append([w.name for w in (last.weight, last.bias) if w is not None])
    return found


def _zero_init_code(per_branch: list[list[str]]) -> str:
    """A loop zeroing the given parameters; written over the block index when the names differ only there
    (a parallel block's two branches, `{i}.attn.proj` and `{i}.mlp.fc2`, share one index)."""
    names = list(dict.fromkeys(n for names in per_branch for n in names))
    split = [name.split(".") for name in names]
    for k in range(min(len(p) for p in split)):
        if not all(p[k].isdigit() for p in split):
            continue
        templates = list(dict.fromkeys(".".join(p[:k] + ["{i}"] + p[k + 1:]) for p in split))
        index = list(dict.fromkeys(p[k] for p in split))
        if len(index) < 2 or len(names) != len(templates) * len(index):
            continue
        if {(t, i) for t in templates for i in index} != {(".".join(p[:k] + ["{i}"] + p[k + 1:]), p[k]) for p in split}:
            continue
        fields = ", ".join(f'f"{t}"' for t in templates)
        numbers = [int(i) for i in index]
        loop = (f"range({numbers[0]}, {numbers[-1] + 1})" if numbers == list(range(numbers[0], numbers[-1] + 1))
                else f"({', '.join(index)})")
        loop = loop.replace("range(0, ", "range(")
        return (f"for i in {loop}:\n"
                f"    for name in ({fields}{',' if len(templates) == 1 else ''}):\n"
                f"        nn.init.zeros_(model.get_parameter(name))\n")
    return "".join(f'nn.init.zeros_(model.get_parameter("{n}"))\n' for n in names)
