"""IL203 concat-scale-mismatch."""

from __future__ import annotations

import math

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import Op, OpKind
from initlint.patterns import GAINS_SQUARED, distribution, next_stops, normalized_after, sig, times
from initlint.registry import rule

# Reported when one input's second moment is 10 times another's (std ratio 3.2): with equal widths the weaker
# input then makes up less than 1/11 of the layer's output variance at init. The replica U-Net's decoder concats
# measure 5.7 (skip 0.50 after BatchNorm-ReLU, transposed conv 0.087 with PyTorch's default init): not reported.
MIN_RATIO = 10.0
# An init computed for one input's width is reported from a forward gain 1.5x what it intends (the ignored
# inputs are a third of the width or more); below that it is within the 2x by which standard inits disagree.
MIN_WIDTH_FACTOR = 1.5
# How closely the weight variance must match an initializer's, in |log(variance ratio)|: 3.5 standard errors
# of a normal sample's variance (sqrt(2/n) relative), plus 5% for uniform or truncated draws (as IL102).
SIGMAS, SLACK = 3.5, 0.05
_LAYERS = (OpKind.LINEAR, OpKind.CONV)
_CONSTANTS = frozenset({OpKind.PARAM, OpKind.FACTORY})


@rule("IL203", "concat-scale-mismatch", applies_to={OpKind.CONCAT}, severity=Severity.WARNING,
      needs_signals=True)
def concat_scale_mismatch(op: Op, graph: ModelGraph) -> list[Issue]:
    """
    ## What it does
    Finds concatenations along the feature or channel dimension that feed a linear or conv layer and whose
    inputs differ in scale by 10x or more in second moment, so that one of them is drowned (U-Net skips,
    embeddings concatenated with dense features); and weight layers after such a concat whose init was
    computed for one input's width instead of the concatenated width.

    The scale of each input is the variance engine's predicted second moment `E[x^2]`, what the next layer's
    weights multiply. Concats along other dimensions (a class token prepended to the sequence, rotary halves),
    concats followed by a BatchNorm or other per-channel norm before the layer (DenseNet: the norm rescales
    each input), constant inputs (zero padding) and inputs predicted to be exactly zero are not findings.

    The init check matches the layer's weight variance against `kaiming_*` and `xavier_*` with the usual gains
    computed from the fans of one input, and reports only when no initializer with the concatenated fans
    gives the same variance (the check IL102 does for grouped convs).

    ## Why is this bad?
    A layer after a concat sums over all its inputs with weights of one scale, so each input's share of the
    output variance at init is its width times its second moment: an input 10x smaller than the others, at
    equal width, makes up less than 1/11 of it, and under SGD the weights that read it get gradients 10x
    smaller in second moment. The network must first learn to rescale it before it can use it. A typical
    cause is an embedding initialized with std 0.02 (BERT's and GPT-2's scheme) concatenated with standardized
    features: a second-moment ratio of 2500.

    An init computed for one input's width makes the layer's forward gain the concatenated width over that
    width: 2x for a U-Net decoder conv reading skip and upsampled maps of equal width.

    The seed's figure for U-Net concats, 4/3 v, is Xavier's averaging of fan-in and fan-out, not a property of
    concatenation: a Xavier conv from 2c concatenated channels to c_out gives 4c / (2c + c_out) v, measured
    1.607, 1.332, 1.000, 0.668 for c_out = c/2, c, 2c, 4c (`measured-claims.md`, claim 7), so 4/3 only when
    c_out = c. That gain is the same with or without a concat and is not reported here.

    ## Example
    ```python
    import torch
    from torch import nn

    class Recommender(nn.Module):
        def __init__(self):
            super().__init__()
            self.item = nn.Embedding(1000, 32)
            nn.init.normal_(self.item.weight, std=0.02)
            self.mlp = nn.Sequential(nn.Linear(32 + 16, 64), nn.ReLU(), nn.Linear(64, 1))

        def forward(self, ids, features):
            return self.mlp(torch.cat([self.item(ids), features], dim=-1))

    torch.manual_seed(0)
    model = Recommender()
    example_inputs = (torch.randint(0, 1000, (8,)), torch.randn(8, 16))
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    class Recommender(nn.Module):
        def __init__(self):
            super().__init__()
            self.item = nn.Embedding(1000, 32)  # PyTorch's N(0, 1), the scale of standardized features
            self.mlp = nn.Sequential(nn.Linear(32 + 16, 64), nn.ReLU(), nn.Linear(64, 1))

        def forward(self, ids, features):
            return self.mlp(torch.cat([self.item(ids), features], dim=-1))

    torch.manual_seed(0)
    model = Recommender()
    example_inputs = (torch.randint(0, 1000, (8,)), torch.randn(8, 16))
    ```

    ## References
    - Ronneberger, Fischer & Brox 2015, "U-Net: Convolutional Networks for Biomedical Image Segmentation"
    - Huang et al. 2017, "Densely Connected Convolutional Networks" (BatchNorm after each concat)
    - He et al. 2015, "Delving Deep into Rectifiers" (fans and gains)
    """
    if op.params is None or op.params.stack or len(op.inputs) < 2 or not op.shape:
        return []
    rank = len(op.shape)
    dim = op.params.dim % rank
    layers = [s for s in next_stops(graph, op) if s.kind in _LAYERS and _contracts(s, dim, rank, op.shape)]
    if not layers:
        return []
    issues = []
    mismatch = _mismatch(graph, op, layers[0])
    if mismatch is not None:
        issues.append(mismatch)
    for layer in layers:
        width = _width_ignored(graph, op, layer)
        if width is not None:
            issues.append(width)
    return issues


def _contracts(layer: Op, dim: int, rank: int, shape: tuple[int, ...]) -> bool:
    """Whether ``layer`` sums over the concatenated dimension: the last one for a linear layer, the channels
    (dimension 1) for a conv; and reads the whole concatenated width."""
    p = layer.params
    if p is None:
        return False
    if layer.kind is OpKind.LINEAR:
        return dim == rank - 1 and p.in_features == shape[-1]
    return dim == 1 and rank >= 3 and p.in_channels == shape[1] and not p.transposed and p.groups == 1


def _parts(graph: ModelGraph, op: Op) -> list[tuple[Op, int, float]]:
    """Each input with its width along the concatenated dimension and its predicted second moment."""
    sizes = op.params.sizes if len(op.params.sizes) == len(op.inputs) else (None,) * len(op.inputs)
    parts = []
    for name, size in zip(op.inputs, sizes):
        src = graph.op(name)
        s = graph.signal(src)
        parts.append((src, size, s.forward.second if s is not None else float("nan")))
    return parts


def _label(src: Op) -> str:
    return f"`{src.module or src.name}`" if src.kind is not OpKind.INPUT else f"input `{src.name}`"


def _mismatch(graph: ModelGraph, op: Op, layer: Op) -> Issue | None:
    parts = [(src, size, m) for src, size, m in _parts(graph, op)
             if src.kind not in _CONSTANTS and math.isfinite(m) and m > 0.0]
    if len(parts) < 2:
        return None
    weak = min(parts, key=lambda p: p[2])
    strong = max(parts, key=lambda p: p[2])
    ratio = strong[2] / weak[2]
    if ratio < MIN_RATIO:
        return None
    sized = all(size for _, size, _ in parts)
    energy = sum(size * m for _, size, m in parts) if sized else None
    share = weak[1] * weak[2] / energy if sized and energy else None
    message = (
        f"`{op.module or op.name}` concatenates {_label(weak[0])} with second moment {sig(weak[2])} and "
        f"{_label(strong[0])} with {sig(strong[2])} into `{layer.module or layer.name}`: x{times(ratio, 3)} apart"
    )
    if share is not None:
        message += f", so {_label(weak[0])} makes up {sig(100 * share, 2)}% of its output variance at init"
    gain = math.sqrt(strong[2] / weak[2])
    source = _scalable(graph, weak[0])
    if source is not None:
        fix = Fix(
            summary=(f"Scale {_label(weak[0])} up by {sig(gain)} (its std to the other input's), at its "
                     f"initialization"),
            code=(f"with torch.no_grad():\n"
                  f"    model.get_parameter(\"{source}\").mul_({sig(gain)})"),
        )
    else:
        fix = Fix(
            summary=f"Normalize the inputs before concatenating them, or scale {_label(weak[0])} by {sig(gain)}",
            code=f"torch.cat([x * {sig(gain)}, y], dim={op.params.dim})  # x: the weaker input",
        )
    return Issue(
        message=message,
        fix=fix,
        predicted={
            "second_moment_ratio": ratio,
            "weak_second_moment": weak[2],
            "strong_second_moment": strong[2],
            "weak_share": share,
            "std_ratio": gain,
        },
    )


def _scalable(graph: ModelGraph, src: Op) -> str | None:
    """The parameter that sets ``src``'s scale, when ``src`` is an embedding or a weight layer's output (through
    reshapes): the one to rescale."""
    while src.kind in (OpKind.PASSTHROUGH, OpKind.DROPOUT) and len(src.inputs) == 1:
        src = graph.op(src.inputs[0])
    if src.kind in (OpKind.EMBEDDING, OpKind.LINEAR, OpKind.CONV) and src.weight is not None:
        if src.bias is None or src.bias.second_moment == 0.0 or src.kind is OpKind.EMBEDDING:
            return src.weight.name
    return None


def _width_ignored(graph: ModelGraph, op: Op, layer: Op) -> Issue | None:
    """A layer after the concat whose weight variance is what an init gives for one input's width alone."""
    w = layer.weight
    sizes = op.params.sizes
    if w is None or w.tensor is None or not w.torch_fan_in or not w.torch_fan_out or len(sizes) != len(op.inputs):
        return None
    variance = w.variance
    if not variance > 0.0:
        return None
    total = sum(sizes)
    per = w.torch_fan_in / total  # kernel taps (1 for a linear layer)
    fan_out = w.torch_fan_out
    tolerance = SIGMAS * math.sqrt(2.0 / w.tensor.numel()) + SLACK

    def close(target: float) -> bool:
        return abs(math.log(variance / target)) <= tolerance

    # What the usual inits give with the concatenated fans: kaiming in fan-in mode and xavier with any gain,
    # kaiming in fan-out mode with ReLU's (torchvision's); a variance one of them explains is not reported.
    right = [v for _, g2 in GAINS_SQUARED for v in (g2 / w.torch_fan_in, 2 * g2 / (w.torch_fan_in + fan_out))]
    right.append(2.0 / fan_out)
    if any(close(v) for v in right):
        return None
    for src, size, _ in _parts(graph, op):
        if not size or size == total:
            continue
        fan_part = size * per
        for nonlinearity, g2 in GAINS_SQUARED:
            for init, target in (("kaiming", g2 / fan_part), ("xavier", 2 * g2 / (fan_part + fan_out))):
                if not close(target):
                    continue
                intended = g2 / w.torch_fan_in if init == "kaiming" else 2 * g2 / (w.torch_fan_in + fan_out)
                factor = variance / intended
                if factor < MIN_WIDTH_FACTOR:
                    continue
                return _width_issue(graph, op, layer, src, size, total, per, init, nonlinearity, intended, factor)
    return None


def _width_issue(graph: ModelGraph, op: Op, layer: Op, src: Op, size: int, total: int, per: float, init: str,
                 nonlinearity: str, intended: float, factor: float) -> Issue:
    w = layer.weight
    taps = "" if per == 1 else f"*{per:g}"
    message = (
        f"`{layer.module or layer.name}` reads {total} concatenated features from `{op.module or op.name}` but "
        f"its weight variance {sig(w.variance)} is what `{init}` ({nonlinearity}) gives for fan-in "
        f"{size}{taps}, the width of one input ({_label(src)}): its forward gain is x{times(factor)} what that "
        f"init intends"
    )
    std = math.sqrt(intended)
    family = distribution(w.tensor) or "normal"
    call = (f'nn.init.normal_(model.get_parameter("{w.name}"), mean=0.0, std={sig(std)})' if family == "normal" else
            f'nn.init.uniform_(model.get_parameter("{w.name}"), -{sig(std * math.sqrt(3))}, {sig(std * math.sqrt(3))})')
    return Issue(
        message=message,
        fix=Fix(
            summary=f"Re-initialize `{w.name}` with std {sig(std)}, for the concatenated fan-in {total}{taps}",
            code=call,
        ),
        predicted={
            "weight_variance": w.variance,
            "intended_variance": intended,
            "forward_gain_factor": factor,
            "fan_in_used": size * per,
            "fan_in": total * per,
        },
        severity=Severity.INFO if normalized_after(graph, layer) else None,
        op=layer.name,
    )
