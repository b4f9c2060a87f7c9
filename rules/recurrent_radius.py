"""IL105 recurrent-radius."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import networkx as nx
import torch

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import Activation, Op, OpKind, RecurrentMode, RecurrentParams
from initlint.patterns import sig
from initlint.registry import rule

# A radius outside [1/BAND, BAND] is "far from 1". Xavier's radius fluctuates with the width h (measured,
# max over 20 seeds: 1.38 at h = 8, 1.29 at h = 16, 1.20 at h = 32 and 64, 1.09 at h = 128, 1.05 at h = 512;
# orthogonal is exactly 1), so 1.25 keeps Xavier quiet from h = 32 up while catching PyTorch's default
# nn.RNN init (mean radius 0.59-0.62 for h from 16 to 512, at most 0.79 over 20 seeds) and Kaiming or
# tanh-gain Xavier (about 1.41 and 1.67).
BAND = 1.25
# And only where the radius compounds to at least this factor (or its inverse) over the sequence length
# of the example input, when it is known.
OVER_SEQUENCE = 10.0

# Ops a hand-written vanilla recurrence passes its state through between two uses of its matrix; a product
# (gates), a norm or another weight layer makes it something else.
_CELL = frozenset({OpKind.ADD, OpKind.SUB, OpKind.ACTIVATION, OpKind.SCALE, OpKind.PASSTHROUGH, OpKind.DROPOUT})


@dataclass(frozen=True)
class _Recurrence:
    op: Op  # where to point
    label: str  # "tanh RNN", "hand-written relu recurrence"
    relu: bool
    weights: tuple[tuple[str, float], ...]  # (qualified name, spectral radius) of each recurrent matrix
    steps: int | None


@rule("IL105", "recurrent-radius", severity=Severity.WARNING)
def recurrent_radius(graph: ModelGraph) -> list[Issue]:
    """
    ## What it does
    Finds vanilla recurrent layers (`nn.RNN` with tanh or ReLU, or the same loop written by hand,
    `h = act(W_ih x_t + W_hh h)`) whose recurrent matrix has a spectral radius far from 1: outside
    [0.8, 1.25], and compounding to a factor of 10 or more (or 1/10 or less) over the sequence length of
    the example input.

    ## Why is this bad?
    Backpropagation through time multiplies the gradient by the recurrent matrix once per step: its linear
    part scales as ρ^T over T steps, ρ being the spectral radius of `W_hh`. Below 1 the gradient from distant
    steps vanishes geometrically, above 1 it explodes (and, with ReLU, the forward state too). This is what an
    initialization can fix: an orthogonal `W_hh` has radius exactly 1, Xavier about 1 (measured 1.031 at
    h = 512), the identity (IRNN, Le et al. 2015) exactly 1 for ReLU RNNs. PyTorch's default `nn.RNN` init,
    U(-1/sqrt(h), 1/sqrt(h)), has radius about 1/sqrt(3) = 0.58: over 12 steps, 0.58^12 = 1.4e-3.

    Measured (n = 512, gradient ratio across T steps): a linear RNN with Xavier's radius 1.031 gives 1.01,
    2.19, 13.5 at T = 10, 50, 100, growing as ρ^T does once T is large. A tanh RNN at radius 1 still loses
    its gradient (1.1e-2, 1.2e-10, 1.2e-20 at the same T), as mean-field theory predicts: tanh's slope is
    below 1 away from 0. That vanishing belongs to the architecture, not to the init, and is not reported;
    LSTMs and GRUs, whose gates address it, are not checked.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.RNN(16, 64, batch_first=True)  # default init: radius about 0.6
    example_inputs = torch.randn(2, 20, 16)
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    model = nn.RNN(16, 64, batch_first=True)
    nn.init.orthogonal_(model.weight_hh_l0)  # radius exactly 1
    example_inputs = torch.randn(2, 20, 16)
    ```

    ## References
    - Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks"
    - Saxe, McClelland & Ganguli 2014, "Exact solutions to the nonlinear dynamics of learning in deep linear
      neural networks" (orthogonal init)
    - Le, Jaitly & Hinton 2015, "A Simple Way to Initialize Recurrent Networks of Rectified Linear Units"
    """
    issues = []
    for rec in [*_modules(graph), *_hand_written(graph)]:
        far = [(name, r) for name, r in rec.weights if _far(r, rec.steps)]
        if not far:
            continue
        name, worst = max(far, key=lambda nr: abs(math.log(nr[1])) if nr[1] > 0 else math.inf)
        radii = [r for _, r in rec.weights]
        where = f"`{rec.op.module}` ({rec.label})" if rec.op.module else f"the {rec.label}"
        message = f"{where} has recurrent spectral radius {sig(worst, 2)}"
        if len(rec.weights) > 1:
            message += f" (`{name.rsplit('.', 1)[-1]}`; all: {', '.join(sig(r, 2) for r in radii)})"
        predicted = {"spectral_radius": worst, "radii": tuple(radii)}
        if rec.steps:
            factor = worst ** rec.steps
            message += (f": over the {rec.steps} steps of the example input the gradient through the recurrence "
                        f"scales as {sig(worst, 2)}^{rec.steps} = {sig(factor, 2)}")
            predicted.update(seq_len=rec.steps, gradient_factor=factor)
        init = "eye_" if rec.relu else "orthogonal_"
        fix = Fix(
            summary=(f"Initialize the recurrent matrix with `nn.init.{init}`, whose spectral radius is exactly 1"
                     + (" (IRNN, for ReLU recurrences)" if rec.relu else "")),
            code="\n".join(f'nn.init.{init}(model.get_parameter("{n}"))' for n, _ in far),
        )
        issues.append(Issue(message=message, fix=fix, predicted=predicted, op=rec.op.name))
    return issues


def _far(radius: float, steps: int | None) -> bool:
    if not math.isfinite(radius) or radius <= 0.0:
        return True
    log_r = abs(math.log(radius))
    if log_r < math.log(BAND):
        return False
    return steps is None or log_r * steps >= math.log(OVER_SEQUENCE)


def _modules(graph: ModelGraph) -> Iterator[_Recurrence]:
    for op in graph.of_kind(OpKind.RECURRENT):
        p = op.params
        if not isinstance(p, RecurrentParams) or p.mode not in (RecurrentMode.RNN_TANH, RecurrentMode.RNN_RELU):
            continue
        if not p.spectral_radius or len(p.spectral_radius) != len(p.hidden_weights):
            continue
        relu = p.mode is RecurrentMode.RNN_RELU
        weights = tuple((w.name, r) for w, r in zip(p.hidden_weights, p.spectral_radius))
        yield _Recurrence(op, "ReLU RNN" if relu else "tanh RNN", relu, weights, p.seq_len)


def _hand_written(graph: ModelGraph) -> Iterator[_Recurrence]:
    """Chains of one square matrix applied to its own previous output through elementwise ops only."""
    uses: dict[str, list[Op]] = {}
    for op in graph.of_kind(OpKind.LINEAR):
        w = op.weight
        if w is not None and w.tensor is not None and len(w.shape) == 2 and w.shape[0] == w.shape[1] > 1:
            uses.setdefault(w.name, []).append(op)
    for name, ops in uses.items():
        if len(ops) < 2:
            continue
        chain = [ops[0]]
        for nxt in ops[1:]:
            if _feeds(graph, chain[-1], nxt):
                chain.append(nxt)
            elif len(chain) < 2:
                chain = [nxt]
        if len(chain) < 2:
            continue
        acts = {graph.op(n).params.fn for n in _between(graph, chain[0], chain[1])
                if graph.op(n).kind is OpKind.ACTIVATION and graph.op(n).params is not None}
        relu = bool(acts) and acts <= {Activation.RELU, Activation.LEAKY_RELU}
        act = ", ".join(sorted(a.value for a in acts)) if acts else "linear"
        radius = _spectral_radius(chain[0].weight.tensor)
        yield _Recurrence(chain[0], f"hand-written {act} recurrence", relu, ((name, radius),), len(chain))


def _cell_view(graph: ModelGraph, a: Op, b: Op):
    return nx.subgraph_view(graph.dag, filter_node=lambda n: n in (a.name, b.name) or graph.ops[n].kind in _CELL)


def _feeds(graph: ModelGraph, a: Op, b: Op) -> bool:
    return nx.has_path(_cell_view(graph, a, b), a.name, b.name)


def _between(graph: ModelGraph, a: Op, b: Op) -> set[str]:
    view = _cell_view(graph, a, b)
    return (nx.descendants(view, a.name) & nx.ancestors(view, b.name)) - {a.name, b.name}


def _spectral_radius(w: torch.Tensor) -> float:
    with torch.no_grad():
        return torch.linalg.eigvals(w.detach().double().cpu()).abs().max().item()
