"""IL303 signal-drift."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from initlint.fans import conv_fans
from initlint.findings import Fix, Issue, Severity
from initlint.gains import activation_gain
from initlint.graph import ModelGraph
from initlint.ops import ActivationParams, ConvParams, Op, OpKind
from initlint.patterns import (is_norm, next_stops, nonlinearity_after, python_path, residual, sig,
                               signal_parent)
from initlint.registry import rule

# Reported when the layers between two normalizations (or between the input and the output) change the forward
# or the backward second moment by this factor or more, in either direction (10x in std), and still do without
# the largest single contribution: a drift compounds over layers, one layer off by itself is IL101's finding.
# A deep MLP at PyTorch's default init (1/6 per Linear-ReLU) gets there over 4 layers.
FACTOR = 100.0
# A weight layer this far (in variance) from its variance-preserving init gets a line in the fix.
FIX_OFF = 1.5
_COUNTED = frozenset({OpKind.LINEAR, OpKind.CONV, OpKind.ACTIVATION})
_TO_OUTPUT = frozenset({OpKind.PASSTHROUGH, OpKind.DROPOUT, OpKind.ACTIVATION})


@rule("IL303", "signal-drift", severity=Severity.WARNING, needs_signals=True)
def signal_drift(graph: ModelGraph) -> Issue | None:
    """
    ## What it does
    Finds stretches of layers with no normalization between them (from the input, an embedding or a norm, to
    the next norm or the model output) over which the weight layers and their activations change the forward
    second moment, or the gradient's, by a factor of 100 or more in either direction, a factor that compounds:
    it is still 100 without the layer that contributes most. It reports the total factors and the ops that
    contribute most.

    The stretch follows the signal's main path: the data operand of layers, the values of attention, the larger
    side of a sum (so a residual stream, not a small branch added to it). Only weight layers and activations
    count: pooling and reductions change the second moment by design, recurrent cells set their own output
    scale, residual sums are IL201's finding, and the output layer (a head) is a choice of its own scale
    (IL104). A stretch that reaches a residual add as its branch is not followed further. The backward factor
    is that of the gradient's energy, its second moment times the number of elements, so that a layer that
    keeps its input's variance (Kaiming fan-in) keeps it too, whatever its fan-out or stride: the telescoping
    `fan_out / fan_in` factors of the per-element gradient are not drift.

    ## Why is this bad?
    Each layer multiplies the second moment by `fan_in * E[w^2]` times its activation's gain; over L layers the
    factors compound. PyTorch's default `kaiming_uniform_(a=sqrt(5))` gives `E[w^2] = 1/(3 fan_in)`: with ReLU,
    1/6 per layer (measured on `Linear(256, 256)`-ReLU x8: forward 0.333, 0.165, 0.059, ...; gradient energy
    1/6 per layer, 1.5e-6 at the input against a predicted 1.3e-6). The forward second moment stops shrinking
    where the biases take over (about 1e-3 here): from there on, the output is mostly biases, the same for every
    input, while the gradient keeps vanishing, and so do the weights' gradients with it: plain SGD barely moves
    them. A stack of layers 10x too large in std grows both by 100 per layer, and the first steps' loss and
    gradients with them.

    A stretch that ends in a normalization is an `info`: the norm restores the forward scale and divides the
    gradient by the same factor, which makes a bias-free ReLU stack scale-invariant (biases, which the drift
    drowns or inflates, are what remains). It is never an `error`: values that leave a floating-point format's
    range are IL301's finding.

    Healthy models get no finding: the reference models (`tests/real_models.py`) have no stretch of two weight
    layers without a normalization or a residual add between them. Their one-layer stretches go down to x0.0036
    (torchvision MobileNetV2's depthwise conv before its BatchNorm, IL102's finding) and x0.0065 (DCGAN's first
    transposed conv at N(0, 0.02)): single layers, not compounding. A stretch that enters a residual add from
    its branch side is not followed: transformers' N(0, 0.02) branches (Llama's value and output projections
    shrink their input x6e-4 at width 64) are meant to be small against the stream.

    ## Example
    ```python
    import torch
    from torch import nn

    layers = []
    for _ in range(6):
        layers += [nn.Linear(256, 256), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(256, 10))  # PyTorch's default init: x1/6 per Linear-ReLU
    example_inputs = torch.randn(32, 256)
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    layers = []
    for _ in range(6):
        layer = nn.Linear(256, 256)
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
        layers += [layer, nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(256, 10))
    example_inputs = torch.randn(32, 256)
    ```

    ## References
    - He et al. 2015, "Delving Deep into Rectifiers" (the product of per-layer factors over depth)
    - Schoenholz et al. 2017, "Deep Information Propagation"
    - PyTorch issue #15314, "Kaiming init of conv and linear layers, why gain = sqrt(5)"
    """
    worst: _Drift | None = None
    states: dict[str, _State] = {}
    for end, last in _ends(graph):
        drift = _drift(graph, end, last, states)
        if drift is None or not drift.chain.layers or drift.worst < math.log(FACTOR) \
                or drift.compounding() < math.log(FACTOR):
            continue
        if worst is None or drift.worst > worst.worst:
            worst = drift
    if worst is None:
        return None

    first, last = worst.layers[0], worst.layers[-1]
    ends_at = "the model output" if worst.end.kind is OpKind.OUTPUT else f"`{_name(worst.end)}`"
    # the ops that push hardest in the direction of the larger drift
    direction = "forward" if abs(math.log(worst.forward)) >= abs(math.log(worst.backward)) else "backward"
    sign = math.copysign(1.0, math.log(getattr(worst, direction)))
    top = sorted(worst.steps, key=lambda s: -sign * math.log(getattr(s, direction)))[:3]
    message = (
        f"the {len(worst.layers)} weight layers from `{_name(first)}` to `{_name(last)}`, with no normalization "
        f"before {ends_at}, change the forward second moment x{sig(worst.forward)} and the gradient's "
        f"x{sig(worst.backward)}; most from "
        + ", ".join(f"{s.label} (x{sig(s.forward)} forward, x{sig(s.backward)} backward)" for s in top)
    )
    lines = []
    for op in worst.layers:
        w = op.weight
        _, g2 = nonlinearity_after(graph, op)
        std = math.sqrt(g2 / w.fan_in)
        if abs(math.log(w.second_moment / (std * std))) > math.log(FIX_OFF):
            lines.append(f'nn.init.normal_(model.get_parameter("{w.name}"), mean=0.0, std={sig(std)})'
                         f"  # now {sig(w.rms)}")
    fix = Fix(
        summary=(f"Re-initialize the {len(lines)} layers off their variance-preserving std, `gain / sqrt(fan_in)` "
                 f"with the gain of the activation after each") if lines else
        "Put a normalization (LayerNorm, BatchNorm) inside the stretch, or rescale the activations that drift",
        code="\n".join(lines),
    )
    return Issue(
        message=message,
        fix=fix,
        predicted={
            "forward_factor": worst.forward,
            "backward_factor": worst.backward,
            "layers": len(worst.layers),
            "top_ops": tuple(s.op.name for s in top),
            "top_forward": tuple(s.forward for s in top),
            "top_backward": tuple(s.backward for s in top),
        },
        severity=Severity.INFO if worst.end.kind is not OpKind.OUTPUT else None,
        op=last.name,
    )


class _Step(NamedTuple):
    op: Op  # a weight layer, or an activation with none before it
    forward: float  # what it multiplies the forward second moment by (its activation included)
    backward: float  # what it multiplies the gradient's energy (second moment x elements) by, output to input
    activation: Op | None = None  # the activation right after the weight layer, folded in

    @property
    def label(self) -> str:
        act = self.activation
        return f"`{_name(self.op)}`" + (f" with its {act.params.fn.value}" if act is not None else "")


class _Chain(NamedTuple):
    """The steps of a stretch so far, newest first, as a linked list shared by every stretch that continues it
    (the signal paths of a graph form a forest), with the running products, log sums and log extremes that
    :class:`_Drift` reads, each accumulated oldest first as ``math.prod`` and ``sum`` over the steps would.
    Tuples, as :class:`_Step` and :class:`_State` are: a walk builds one per op, and a frozen dataclass costs
    several times a tuple to build."""

    step: _Step
    rest: "_Chain | None"
    forward: float  # product of the steps' forward factors
    backward: float
    layers: int  # steps on a weight layer
    log_sum: tuple[float, float]  # forward, backward
    log_max: tuple[float, float]
    log_min: tuple[float, float]

    @classmethod
    def push(cls, rest: _Chain | None, step: _Step) -> _Chain:
        logs = (_log(step.forward), _log(step.backward))
        if rest is None:
            return cls(step, None, 1 * step.forward, 1 * step.backward, int(step.op.kind is not OpKind.ACTIVATION),
                       (0 + logs[0], 0 + logs[1]), logs, logs)
        return cls(step, rest, rest.forward * step.forward, rest.backward * step.backward,
                   rest.layers + (step.op.kind is not OpKind.ACTIVATION),
                   (rest.log_sum[0] + logs[0], rest.log_sum[1] + logs[1]),
                   (max(rest.log_max[0], logs[0]), max(rest.log_max[1], logs[1])),
                   (min(rest.log_min[0], logs[0]), min(rest.log_min[1], logs[1])))

    def steps(self) -> tuple[_Step, ...]:
        out, node = [], self
        while node is not None:
            out.append(node.step)
            node = node.rest
        return tuple(reversed(out))


def _log(x: float) -> float:
    """``math.log(x)`` where defined: a chain with a factor of 0 or inf has no finite product and is no drift."""
    return math.log(x) if 0 < x < math.inf else math.nan


@dataclass(frozen=True)
class _Drift:
    end: Op  # the norm or output the stretch ends at
    chain: _Chain

    @property
    def forward(self) -> float:
        return self.chain.forward

    @property
    def backward(self) -> float:
        return self.chain.backward

    @property
    def worst(self) -> float:
        return max(abs(math.log(self.forward)), abs(math.log(self.backward)))

    def compounding(self) -> float:
        """The larger |log factor| of the two directions once the step pushing hardest that way is left out."""
        rest = []
        for i in (0, 1):
            total = self.chain.log_sum[i]
            hardest = self.chain.log_max[i] if math.copysign(1.0, total) > 0 else -self.chain.log_min[i]
            rest.append(abs(total) - max(hardest, 0.0))
        return max(rest)

    @property
    def steps(self) -> tuple[_Step, ...]:
        return self.chain.steps()

    @property
    def layers(self) -> tuple[Op, ...]:
        return tuple(s.op for s in self.steps if s.op.kind is not OpKind.ACTIVATION)


def _ends(graph: ModelGraph):
    """(norm or output, the operand it ends a stretch at)."""
    for op in graph:
        if op.kind is OpKind.OUTPUT or is_norm(graph, op):
            for name in dict.fromkeys(op.inputs):
                yield op, graph.op(name)


class _State(NamedTuple):
    """The walk along a signal path up to an op: the steps counted, and how the walk stands."""

    chain: _Chain | None = None
    branch: bool = False  # the path entered a residual add from its branch side: no stretch
    head: bool = False  # the path reached the output layer: the steps stop there
    plain: bool = True  # only reshapes and dropout since the newest step's op


_START = _State()
_PLAIN = frozenset({OpKind.PASSTHROUGH, OpKind.DROPOUT})


def _drift(graph: ModelGraph, end: Op, last: Op, states: dict[str, _State]) -> _Drift | None:
    s = graph.signal(last)
    if s is None or s.backward is None:
        return None
    state = _state(graph, last, states)
    if state.branch or state.chain is None:
        return None
    forward, backward = state.chain.forward, state.chain.backward
    if not (forward > 0 and backward > 0 and math.isfinite(forward) and math.isfinite(backward)):
        return None
    return _Drift(end, state.chain)


def _state(graph: ModelGraph, op: Op, states: dict[str, _State]) -> _State:
    """The walk's state at ``op`` along its :func:`~initlint.patterns.signal_path`, each op's computed once from
    its predecessor's (``states``: the memo, shared by every end of the graph)."""
    todo, cur = [], op
    while cur.name not in states:
        prev = signal_parent(graph, cur)
        if prev is None:
            states[cur.name] = _START
            break
        todo.append((prev, cur))
        cur = prev
    for prev, cur in reversed(todo):
        states[cur.name] = _advance(graph, states[prev.name], prev, cur)
    return states[op.name]


def _advance(graph: ModelGraph, state: _State, prev: Op, op: Op) -> _State:
    if state.branch or state.head:
        return state
    if op.kind is OpKind.ADD and (res := residual(graph, op)) is not None and res.branch.name == prev.name:
        return _State(branch=True)  # a residual branch: its scale against the stream is IL201's (or IL101's)
    if op.kind in (OpKind.LINEAR, OpKind.CONV) and _head(graph, op):
        return _State(state.chain, head=True)
    step = _step(graph, prev, op) if op.kind in _COUNTED else None
    if step is None:
        return _State(state.chain, plain=state.plain and op.kind in _PLAIN)
    chain = state.chain
    if op.kind is OpKind.ACTIVATION and chain is not None and chain.step.activation is None \
            and chain.step.op.kind is not OpKind.ACTIVATION and state.plain:
        last = chain.step  # the activation right after a weight layer: one step
        step = _Step(last.op, last.forward * step.forward, last.backward * step.backward, op)
        chain = chain.rest
    return _State(_Chain.push(chain, step))


def _step(graph: ModelGraph, prev: Op, op: Op) -> _Step | None:
    x, y = graph.signal(prev), graph.signal(op)
    if x is None or y is None or not x.forward.second > 0 or not y.forward.second > 0:
        return None
    forward = y.forward.second / x.forward.second
    if op.kind is OpKind.ACTIVATION:
        if not isinstance(op.params, ActivationParams):
            return None
        backward = activation_gain(op.params, x.forward).backward
    else:
        w = op.weight
        if w is None or w.tensor is None or not w.second_moment > 0:
            return None
        fans = conv_fans(op.params, prev.shape, op.shape) if isinstance(op.params, ConvParams) else None
        backward = (fans[0] if fans else w.fan_in) * w.second_moment
    if not backward > 0:
        return None
    return _Step(op, forward, backward)


def _head(graph: ModelGraph, op: Op) -> bool:
    stops = next_stops(graph, op, _TO_OUTPUT)
    return bool(stops) and all(s.kind is OpKind.OUTPUT for s in stops)


def _name(op: Op) -> str:
    return python_path(op.module) if op.module else op.name
