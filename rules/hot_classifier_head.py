"""IL104 hot-classifier-head."""

from __future__ import annotations

import math

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import ConvParams, LinearParams, Op, OpKind
from initlint.patterns import next_stops, sig
from initlint.registry import rule
from initlint.softmax import softmax_stats

# A head is hot when the expected cross-entropy at init exceeds ln(C), an untrained classifier's loss, by this
# many nats: the first steps are spent unlearning confident random predictions. A Xavier head (claim 13:
# logit std 1.41 for C = 10, 1.16 for C = 1000) stays below it (0.80 and 0.67 nats measured), PyTorch's default
# head on normalized features (std 1/sqrt(3) = 0.58) far below (0.16 nats).
EXCESS_NATS = 1.0
# The fix aims at this logit std: 0.12 nats above ln(C) for any C, classes still told apart.
TARGET_STD = 0.5
_TO_END = frozenset({OpKind.PASSTHROUGH, OpKind.DROPOUT})
# Losses over class logits computed in forward (Hugging Face models given labels); the capture keeps them as ops
# of unknown semantics, named by what was called.
_LOSSES = ("cross_entropy", "nll_loss")


@rule("IL104", "hot-classifier-head", applies_to={OpKind.LINEAR, OpKind.CONV}, severity=Severity.WARNING,
      needs_signals=True)
def hot_classifier_head(op: Op, graph: ModelGraph) -> Issue | None:
    """
    ## What it does
    Finds the layer producing a classifier's logits (a linear layer whose output is the model output, or a
    linear or conv layer feeding a softmax, a log-softmax or a cross-entropy computed in forward) whose
    predicted logit std s at init makes the expected initial cross-entropy exceed ln(C), the loss of a uniform
    guess over C classes, by 1 nat or more.

    The expected loss is computed for independent Gaussian logits of std s and a uniformly random target (a
    seeded numerical integral, the variance engine's softmax statistics): s = 1.6 for C = 10, s = 1.42 for
    C = 1000. A layer returned as the model output counts when it has two or more outputs; a regression head with
    several outputs is read as a classifier too (a large output std is as wasteful there).

    ## Why is this bad?
    The softmax of logits with std s puts most of the probability on a few random classes: the model starts
    confidently wrong, and the first steps are spent unlearning that instead of learning the task (the
    "hockey stick" loss curve). A tied embedding left at `nn.Embedding`'s N(0, 1) is the classic case: with
    width d, the logits have std sqrt(d) (8 at d = 64, 27.7 at d = 768); nanoGPT and GPT-2 initialize the
    embedding at N(0, 0.02) for that reason.

    Measured (claim 13): a Xavier head on d = 2048 features gives logit std 1.413 (C = 10) and 1.159 (C = 1000),
    as predicted, and initial cross-entropies 3.11 and 7.57 against ln C = 2.30 and 6.91: the seed chapter's
    "initial loss about ln C" holds only as ln C + s^2/2, and that quadratic itself holds only while s is
    below about 1.5. Beyond, it over-estimates: at s = 3, C = 10 the measured loss is 5.08 (ln C + s^2/2 =
    6.80), at s = 5, C = 1000 it is 17.0 (19.4). The rule prints the integral, which matched all four
    measurements within 0.03.

    Measured on the Example (20,000 unit-Gaussian inputs, random targets): logit std 5.08 (predicted 5.16),
    cross-entropy 13.3 (predicted 13.5). The logits are taken as independent across classes; with an output
    layer tied to the input embedding they are not (the input token's own logit is about `d` while the others
    have std sqrt(d)), and the loss is higher than printed: a 64-wide tied model at N(0, 1) measured 60.5 for a
    predicted 24.9. The finding stands, its figure is then a lower bound.

    Not an `error`: the gradient of the cross-entropy with respect to the logits is bounded (|p - y| <= 1), so
    training recovers, at a cost.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 100))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.2)  # logit std 5.2: expected loss 13.5 against ln(100) = 4.6
            nn.init.zeros_(m.bias)
    example_inputs = torch.randn(64, 128)
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 100))
    nn.init.kaiming_normal_(model[0].weight, nonlinearity="relu")
    nn.init.normal_(model[2].weight, std=0.02)  # logit std 0.02 * sqrt(256 * 1.0) = 0.32
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    example_inputs = torch.randn(64, 128)
    ```

    ## References
    - Karpathy 2019, "A Recipe for Training Neural Networks" (verify the loss at init: -log(1/C))
    - Radford et al. 2019, GPT-2; Karpathy, nanoGPT `model.py` (N(0, 0.02) tied embedding)
    - Press & Wolf 2017, "Using the Output Embedding to Improve Language Models"
    """
    classes = _classes(graph, op)
    w, s = op.weight, graph.signal(op)
    if classes is None or w is None or s is None or not math.isfinite(s.forward.variance):
        return None
    variance = s.forward.variance
    if variance / 2 < EXCESS_NATS:
        # Jensen: E[logsumexp(l)] <= ln(C) + variance / 2 for Gaussian logits, so the excess cannot reach the
        # threshold; skip the Monte Carlo estimate (one per head, the bulk of a small model's rules).
        return None
    std = math.sqrt(variance)
    loss = -softmax_stats(1, classes, variance).log_mean
    uniform = math.log(classes)
    excess = loss - uniform
    if not excess >= EXCESS_NATS:
        return None

    x = graph.signal(op.inputs[0]) if op.inputs else None
    name = op.module or w.name
    message = f"`{name}` produces {classes} logits with std {sig(std)} at init"
    if x is not None:
        message += f" (weight std {sig(w.rms)}, fan-in {_n(w.fan_in)}, features of second moment {sig(x.forward.second)})"
    message += (f": the expected initial cross-entropy is {sig(loss)}, {sig(excess)} nats above "
                f"ln({classes}) = {sig(uniform)}")

    bias = op.bias
    bias_part = bias.variance if bias is not None and not bias.constant else 0.0
    weight_part = max(variance - bias_part, 1e-30)
    new_std = w.rms * TARGET_STD / math.sqrt(weight_part)
    code = f'nn.init.normal_(model.get_parameter("{w.name}"), mean=0.0, std={sig(new_std)})'
    if bias is not None and bias.second_moment > 0.1 * TARGET_STD**2:
        code += f'\nnn.init.zeros_(model.get_parameter("{bias.name}"))'
    code += "  # or nn.init.zeros_ on the weight: the loss starts at exactly ln(C)"
    fix = Fix(
        summary=(f"Re-initialize `{w.name}` with std {sig(new_std)}, which gives logit std {sig(TARGET_STD)} "
                 f"(expected initial loss ln({classes}) + {sig(-softmax_stats(1, classes, TARGET_STD**2).log_mean - uniform, 2)})"),
        code=code,
    )
    predicted = {"classes": classes, "logit_std": std, "expected_loss": loss, "ln_classes": uniform,
                 "excess_nats": excess, "target_std": new_std}
    if x is not None:
        predicted["feature_second_moment"] = x.forward.second
    return Issue(message=message, fix=fix, predicted=predicted)


def _classes(graph: ModelGraph, op: Op) -> int | None:
    """The number of classes if ``op`` produces a classifier's logits, else None."""
    p = op.params
    if isinstance(p, LinearParams):
        classes, last = p.out_features, True
    elif isinstance(p, ConvParams) and not p.transposed:
        classes, last = p.out_channels, False
    else:
        return None
    ends = next_stops(graph, op, _TO_END)
    if classes < 2 or not ends:
        return None
    for end in ends:
        if end.kind is OpKind.SOFTMAX and end.params is not None and end.shape:
            if end.shape[end.params.dim % len(end.shape)] != classes:
                return None  # a softmax over positions or heads, not over these outputs
        elif end.kind is OpKind.UNKNOWN and end.target.rsplit(".", 1)[-1] in _LOSSES:
            logits = graph.op(end.inputs[0]).shape if end.inputs else None  # classes along dim 1, or 0 alone
            if not logits or logits[1 if len(logits) > 1 else 0] != classes:
                return None
        elif not (end.kind is OpKind.OUTPUT and last):
            return None
    return classes


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else sig(x)
