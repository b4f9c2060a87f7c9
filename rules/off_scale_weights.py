"""IL101 off-scale-weights."""

from __future__ import annotations

import math
from dataclasses import dataclass

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import Op, OpKind
from initlint.patterns import (
    WEIGHT_LAYERS, groups_blind, is_norm, next_stops, nonlinearity_after, python_path, residual, sig,
)
from initlint.registry import rule

# A weight variance more than this factor outside the variance-preserving band is off-scale. PyTorch's default
# init (E[w^2] = 1/(3 fan_in)) sits 3x below the band's bottom when fan_out <= fan_in, and is used by healthy
# models everywhere: the factor must clear it. 10 (3.2x in std) leaves room for a sample's spread.
FACTOR = 10.0
# A too-large layer inside a residual branch matters once the branch reaches the add with at least the skip's
# second moment: from there on the block's output is mostly the branch, not the identity path.
BRANCH_OVER_SKIP = 1.0
# What a signal passes through on its way from a layer to where its scale matters (IL101 follows it through
# further weight layers, gates and concatenations, which all carry a scale error forward).
_STOPS = frozenset({OpKind.COMPARE, OpKind.FACTORY, OpKind.RANDOM, OpKind.UNKNOWN})
_TO_SOFTMAX = frozenset({OpKind.PASSTHROUGH, OpKind.SCALE, OpKind.ADD, OpKind.WHERE, OpKind.DROPOUT, OpKind.MATH})
_DISPLAY = {"relu": "ReLU", "leaky_relu": "leaky ReLU", "selu": "SELU"}


@dataclass(frozen=True)
class _End:
    kind: str  # "norm", "output", "residual", "logits"
    op: Op
    through: tuple[str, ...]  # weight layers crossed on the way
    branch_over_skip: float | None = None


@rule("IL101", "off-scale-weights", applies_to={OpKind.LINEAR, OpKind.CONV}, severity=Severity.WARNING,
      needs_signals=True)
def off_scale_weights(op: Op, graph: ModelGraph) -> Issue | None:
    """
    ## What it does
    Finds linear and conv layers whose weight variance is more than 10x outside the variance-preserving band
    for their true fans and the nonlinearity after them, where the deviation is not absorbed by a
    normalization before it matters.

    The band runs from the fan-out target to the fan-in target, `min(1, g^2) / max(fan_in, fan_out)` to
    `max(1, g^2) / min(fan_in, fan_out)`, g being the gain `torch.nn.init.calculate_gain` gives the activation
    that follows (2 for ReLU and the ReLU-like GELU, SiLU, ELU; 25/9 for tanh; 1 with none). LeCun, Xavier and
    Kaiming in either mode all fall inside it, with or without their gain. The fans are the true ones: a
    grouped conv's fan-out counts one group, a transposed conv's fan-in is `in_channels * k^D / s^D`.

    The rule then follows the signal from the layer (through activations, reshapes, further weight layers,
    gates and concatenations) to where its scale matters:
    - a normalization (BatchNorm, LayerNorm, GroupNorm, RMSNorm, hand-written ones included) on every path:
      the forward scale is removed. Too-small weights are then not reported (DCGAN's N(0, 0.02) before
      BatchNorm, MobileNet's depthwise convs); too-large ones are an `info`;
    - a residual add, as its branch: too-small weights make the block start near the identity, a deliberate
      choice (GPT-2 and ViT's N(0, 0.02), Fixup, SkipInit), and are not reported; too-large ones are a
      `warning` when the branch reaches the add with at least the skip's second moment;
    - the model output through at least one further weight layer: a `warning`;
    - attention logits (the query and key projections, a product feeding a softmax): not this rule's business
      (IL205 checks the logit scale; T5 folds `1/sqrt(d_k)` into its query weights).

    A layer whose output is the model output through activations and reshapes only (a head) is not checked:
    its scale is the output's, a choice (zero-initialized heads are common); IL104 checks classifier heads.
    A grouped conv initialized with PyTorch's groups-blind fan-out is IL102's finding, which names the cause:
    one defect gets one finding, so this rule leaves such a conv alone.

    ## Why is this bad?
    A layer multiplies its input's second moment by about `fan_in * E[w^2]` (Xavier keeps a linear layer's
    variance, 2 fan_in / (fan_in + fan_out) in general: measured 0.998 and 1.603 for 512->512 and 1024->256).
    A layer 100x off makes everything after it 100x off in variance: the next layers' biases swamp a signal
    that is too small, or a signal that is too large saturates tanh and sigmoid units and makes the first
    steps' gradients and loss large. Measured on the Example below (4096 unit-Gaussian inputs): the first
    layer multiplies the second moment by 258 (predicted 258) and the output's second moment is 133x that of
    the Use-instead net (predicted 123x).

    Healthy models get no finding. PyTorch's default `kaiming_uniform_(a=sqrt(5))` gives
    `E[w^2] = 1/(3 fan_in)`, 3x below the band (and 6x below Kaiming for ReLU: IL303 catches the compounding
    over depth, not this rule). In the reference models (`tests/real_models.py`) the layers off by more than
    10x are all absorbed, deliberate or heads: BERT, DistilBERT, GPT-2, Llama and ViT's N(0, 0.02) at width 64
    (10x to 156x below) sit in residual branches or produce attention logits; ViT's patch embedding (13x below)
    starts a residual stream that only LayerNorms read; torchvision MobileNetV2's depthwise convs (17x to 98x
    below, IL102's finding) feed BatchNorms; T5's query weights (15x and 16x below: the folded `1/sqrt(d_k)`)
    produce attention logits; MobileNetV2's N(0, 0.01) classifier and DCGAN's last transposed conv (393x and
    40x below) are output layers. DCGAN's other N(0, 0.02) layers stay within 10x (4.9x and 9.7x below for the
    second and third) and feed BatchNorms anyway.

    With a normalization after the layer, the forward scale is restored, but a weight that a norm makes
    scale-invariant has an effective learning rate proportional to `1/|w|^2`: too-large weights learn that many
    times slower and, without weight decay, their norm never shrinks (Arora et al. 2019); too-small ones grow
    within the first steps, so they are not reported.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )
    nn.init.normal_(model[0].weight, std=1.0)  # 128x Kaiming's variance
    example_inputs = torch.randn(32, 256)
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )
    nn.init.kaiming_normal_(model[0].weight, nonlinearity="relu")  # std sqrt(2/256) = 0.0884
    example_inputs = torch.randn(32, 256)
    ```

    ## References
    - Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward neural networks"
    - He et al. 2015, "Delving Deep into Rectifiers" (fan-in and fan-out modes, the ReLU gain)
    - Arora, Li & Lyu 2019, "Theoretical Analysis of Auto Rate-Tuning by Batch Normalization"
    - PyTorch `torch.nn.init.calculate_gain`; `nn.Linear.reset_parameters` (`a=sqrt(5)`)
    """
    w = op.weight
    if w is None or w.tensor is None or not math.isfinite(w.rms) or w.zero or w.fan_in <= 0 or w.fan_out <= 0:
        return None
    if groups_blind(op):  # IL102 names the cause
        return None
    second = w.second_moment
    nonlinearity, g2 = nonlinearity_after(graph, op)
    fans = (w.fan_in, w.fan_out)
    low, high = min(1.0, g2) / max(fans), max(1.0, g2) / min(fans)
    if low / FACTOR <= second <= high * FACTOR:
        return None
    large = second > high
    factor = second / high if large else low / second
    ends = [e for e in _ends(graph, op) if e.kind != "logits"]
    if not ends or all(e.kind == "output" and not e.through for e in ends):
        return None  # a head, or only attention logits downstream
    matters = [e for e in ends if (e.kind == "output" and e.through)
               or (e.kind == "residual" and large and e.branch_over_skip >= BRANCH_OVER_SKIP)]
    norms = [e for e in ends if e.kind == "norm"]
    if matters:
        severity, end = None, matters[0]
    elif large and norms:
        severity, end = Severity.INFO, norms[0]
    else:
        return None

    name = op.module or w.name
    x, y = graph.signal(op.inputs[0]) if op.inputs else None, graph.signal(op)
    gain = y.forward.second / x.forward.second if x is not None and y is not None and x.forward.second > 0 else None
    after = "no activation" if nonlinearity == "linear" else f"the {_DISPLAY.get(nonlinearity, nonlinearity)} after it"
    label = "std" if abs(w.mean) < 0.1 * w.std else "rms"
    message = (
        f"`{name}` has weight {label} {sig(w.rms)}: its variance is {sig(factor)}x {'above' if large else 'below'} "
        f"the variance-preserving band for fans ({_n(w.fan_in)}, {_n(w.fan_out)}) and {after} "
        f"(std {_band(low, high)})"
    )
    if gain is not None:
        message += f"; it multiplies the signal's second moment by {sig(gain)}"
    message += ", " + _where(end, large, factor)

    std = math.sqrt(g2 / w.fan_in)
    fix = Fix(
        summary=f"Re-initialize `{w.name}` with std {sig(std)}, the fan-in target for {after}",
        code=(f'nn.init.normal_(model.get_parameter("{w.name}"), mean=0.0, std={sig(std)})  '
              f"# sqrt({_g2(g2)} / fan_in {_n(w.fan_in)})"),
    )
    predicted = {
        "weight_second_moment": second,
        "band_low": low,
        "band_high": high,
        "factor": factor,
        "fan_in": w.fan_in,
        "fan_out": w.fan_out,
        "gain_squared": g2,
        "target_std": std,
    }
    if gain is not None:
        predicted["forward_gain"] = gain
    if end.branch_over_skip is not None:
        predicted["branch_over_skip"] = end.branch_over_skip
    return Issue(message=message, fix=fix, predicted=predicted, severity=severity)


def _where(end: _End, large: bool, factor: float) -> str:
    via = ", ".join(f"`{python_path(n)}`" for n in end.through[:3]) + (", ..." if len(end.through) > 3 else "")
    if end.kind == "output":
        return f"and the model output gets it through {via}"
    if end.kind == "residual":
        where = f"`{end.op.module}`'s residual add" if end.op.module else "a residual add"
        return f"and its branch reaches {where} with {sig(end.branch_over_skip)}x the skip's second moment"
    norm = f"`{end.op.module}`" if end.op.module else "a normalization"
    return (f"and {norm} normalizes it away: the forward scale is restored, the weight's effective learning rate "
            f"is {sig(factor)}x smaller")


def _ends(graph: ModelGraph, op: Op) -> list[_End]:
    """Where ``op``'s signal goes until its scale stops mattering or starts to: norms, residual adds (as the
    branch), the model output, attention logits."""
    ends: list[_End] = []
    frontier: list[tuple[str, tuple[str, ...]]] = [(op.name, ())]
    seen = {op.name}
    while frontier:
        node, through = frontier.pop(0)
        for succ in graph.consumers(graph.op(node)):
            end = _end(graph, node, succ, through)
            if end is not None:
                ends.append(end)
                continue
            if succ.name in seen or succ.kind in _STOPS:
                continue
            seen.add(succ.name)
            frontier.append((succ.name, through + ((succ.module or succ.name,) if succ.kind in WEIGHT_LAYERS else ())))
    return ends


def _end(graph: ModelGraph, node: str, succ: Op, through: tuple[str, ...]) -> _End | None:
    if succ.kind is OpKind.OUTPUT:
        return _End("output", succ, through)
    if is_norm(graph, succ):
        return _End("norm", succ, through)
    if succ.kind is OpKind.SOFTMAX:
        return _End("logits", succ, through)
    if succ.kind is OpKind.ATTENTION and node not in succ.inputs[2:3]:
        return _End("logits", succ, through)
    if succ.kind is OpKind.MATMUL and any(s.kind is OpKind.SOFTMAX for s in next_stops(graph, succ, _TO_SOFTMAX)):
        return _End("logits", succ, through)
    if succ.kind is OpKind.ADD:
        res = residual(graph, succ)
        if res is not None and res.branch.name == node:
            branch, skip = graph.signal(res.branch), graph.signal(res.skip)
            ratio = branch.forward.second / skip.forward.second if skip.forward.second > 0 else math.inf
            return _End("residual", succ, through, ratio)
    return None


def _band(low: float, high: float) -> str:
    a, b = sig(math.sqrt(low)), sig(math.sqrt(high))
    return a if a == b else f"{a} to {b}"


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else sig(x)


def _g2(g2: float) -> str:
    return {2.0: "2", 1.0: "1", 25.0 / 9.0: "25/9", 9.0 / 16.0: "9/16"}.get(g2, sig(g2))
