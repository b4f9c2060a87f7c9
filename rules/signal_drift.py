"""IL303 signal-drift."""

from __future__ import annotations

import math
from dataclasses import dataclass

from initlint.fans import conv_fans
from initlint.findings import Fix, Issue, Severity
from initlint.gains import activation_gain
from initlint.graph import ModelGraph
from initlint.ops import ActivationParams, ConvParams, Op, OpKind
from initlint.patterns import is_norm, next_stops, nonlinearity_after, python_path, residual, sig, signal_path
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
    for end, last in _ends(graph):
        drift = _drift(graph, end, last)
        if drift is None or not drift.layers or drift.worst < math.log(FACTOR) \
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


@dataclass(frozen=True)
class _Step:
    op: Op  # a weight layer, or an activation with none before it
    forward: float  # what it multiplies the forward second moment by (its activation included)
    backward: float  # what it multiplies the gradient's energy (second moment x elements) by, output to input
    activation: Op | None = None  # the activation right after the weight layer, folded in

    @property
    def label(self) -> str:
        act = self.activation
        return f"`{_name(self.op)}`" + (f" with its {act.params.fn.value}" if act is not None else "")


@dataclass(frozen=True)
class _Drift:
    end: Op  # the norm or output the stretch ends at
    steps: tuple[_Step, ...]
    forward: float
    backward: float

    @property
    def worst(self) -> float:
        return max(abs(math.log(self.forward)), abs(math.log(self.backward)))

    def compounding(self) -> float:
        """The larger |log factor| of the two directions once the step pushing hardest that way is left out."""
        rest = []
        for direction in ("forward", "backward"):
            logs = [math.log(getattr(s, direction)) for s in self.steps]
            total = sum(logs)
            rest.append(abs(total) - max(max(math.copysign(1.0, total) * v for v in logs), 0.0))
        return max(rest)

    @property
    def layers(self) -> tuple[Op, ...]:
        return tuple(s.op for s in self.steps if s.op.kind is not OpKind.ACTIVATION)


def _ends(graph: ModelGraph):
    """(norm or output, the operand it ends a stretch at)."""
    for op in graph:
        if op.kind is OpKind.OUTPUT or is_norm(graph, op):
            for name in dict.fromkeys(op.inputs):
                yield op, graph.op(name)


def _drift(graph: ModelGraph, end: Op, last: Op) -> _Drift | None:
    s = graph.signal(last)
    if s is None or s.backward is None:
        return None
    path = signal_path(graph, last)
    steps: list[_Step] = []
    for prev, op in zip(path, path[1:]):
        if op.kind is OpKind.ADD and (res := residual(graph, op)) is not None and res.branch.name == prev.name:
            return None  # a residual branch: its scale against the stream is IL201's (or IL101's) finding
        if op.kind in (OpKind.LINEAR, OpKind.CONV) and _head(graph, op):
            break
        if op.kind not in _COUNTED:
            continue
        step = _step(graph, prev, op)
        if step is None:
            continue
        if op.kind is OpKind.ACTIVATION and steps and steps[-1].activation is None \
                and steps[-1].op.kind is not OpKind.ACTIVATION and _directly_after(path, steps[-1].op, op):
            last = steps[-1]
            step = _Step(last.op, last.forward * step.forward, last.backward * step.backward, op)
            steps.pop()
        steps.append(step)
    if not steps:
        return None
    forward = math.prod(s.forward for s in steps)
    backward = math.prod(s.backward for s in steps)
    if not (forward > 0 and backward > 0 and math.isfinite(forward) and math.isfinite(backward)):
        return None
    return _Drift(end, tuple(steps), forward, backward)


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


def _directly_after(path: tuple[Op, ...], layer: Op, act: Op) -> bool:
    between = path[path.index(layer) + 1:path.index(act)]
    return all(o.kind in (OpKind.PASSTHROUGH, OpKind.DROPOUT) for o in between)


def _head(graph: ModelGraph, op: Op) -> bool:
    stops = next_stops(graph, op, _TO_OUTPUT)
    return bool(stops) and all(s.kind is OpKind.OUTPUT for s in stops)


def _name(op: Op) -> str:
    return python_path(op.module) if op.module else op.name
