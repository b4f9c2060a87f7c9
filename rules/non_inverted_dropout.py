"""IL206 non-inverted-dropout."""

from __future__ import annotations

from dataclasses import dataclass

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import CompareParams, Op, OpKind, RandomDist, RandomParams, ScaleParams
from initlint.patterns import PER_SAMPLE_NORMS, normalized_after, sig
from initlint.registry import rule

# A rescale within 2% of 1/keep is inverted dropout written with a rounded constant (1.1 for keep 0.9 is 1%
# off), not a finding.
TOLERANCE = 0.02


@dataclass(frozen=True)
class _Mask:
    keep: float | None  # probability that an element is kept (None: not visible in the graph)
    scale: float  # the factor applied to the mask or the product (1/keep for inverted dropout)
    data: str  # the operand being masked


@rule("IL206", "non-inverted-dropout", applies_to={OpKind.MUL}, severity=Severity.WARNING,
      needs_weights=False)
def non_inverted_dropout(op: Op, graph: ModelGraph) -> Issue | None:
    """
    ## What it does
    Finds hand-written dropout (a product with a random keep-mask, `x * (torch.rand_like(x) > p).float()`
    or `x * torch.empty_like(x).bernoulli_(keep)`) that does not divide the kept values by the keep
    probability, on the mask or on the product. Stochastic depth written by hand is the same pattern.
    (`torch.where` and `masked_fill` masks are not checked: the graph does not say which side is kept.)

    ## Why is this bad?
    A mask that keeps each element with probability q multiplies the mean by q and the second moment by q
    (measured at p = 0.5: 0.4998). In training every such layer shrinks the signal by q; in eval mode the mask
    is gone and the next layers see activations 1/q times larger than the ones they were trained on.
    PyTorch's `nn.Dropout` is inverted: it divides by q in training, so the mean is the same in both modes
    (the second moment doubles at p = 0.5 in training, measured, which is the noise dropout adds).
    Dividing the weights of the next layer by sqrt(q) restores the second moment in training (measured
    0.999) but not the train/eval mismatch.

    A per-sample norm after the mask (LayerNorm, RMSNorm, GroupNorm) removes the scale in both modes, and the
    finding is an `info`; a BatchNorm does not, since in eval it uses running statistics collected on the
    shrunken training activations.

    ## Example
    ```python
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, p=0.5):
            super().__init__()
            self.fc1, self.fc2, self.p = nn.Linear(32, 64), nn.Linear(64, 10), p

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            if self.training:
                h = h * (torch.rand_like(h) > self.p).float()
            return self.fc2(h)

    model = Net()
    example_inputs = torch.randn(4, 32)
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, p=0.5):
            super().__init__()
            self.fc1, self.fc2, self.p = nn.Linear(32, 64), nn.Linear(64, 10), p

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            if self.training:
                h = h * (torch.rand_like(h) > self.p).float() / (1 - self.p)
            return self.fc2(h)

    model = Net()
    example_inputs = torch.randn(4, 32)
    ```

    ## References
    - Srivastava et al. 2014, "Dropout: A Simple Way to Prevent Neural Networks from Overfitting"
      (weights scaled by q at test time; inverted dropout moves that to training)
    - PyTorch `nn.Dropout` documentation: "the outputs are scaled by a factor of 1/(1-p) during training"
    """
    mask = _mask_of(graph, op)
    if mask is None:
        return None
    keep = mask.keep
    if keep is not None:
        if keep >= 1.0 or keep <= 0.0 or abs(keep * mask.scale - 1.0) <= TOLERANCE:
            return None
    elif mask.scale != 1.0:
        return None  # rescaled by something we cannot check against an unknown keep probability

    name = f"`{op.module}`" if op.module else f"`{op.name}`"
    normalized = normalized_after(graph, op, PER_SAMPLE_NORMS)
    if keep is None:
        message = (f"{name} multiplies by a random keep-mask and never rescales: in training its mean and second "
                   f"moment shrink by the keep probability, and eval mode, without the mask, does not")
        predicted: dict = {"keep_probability": None}
        fix = Fix(summary="Divide the kept values by the keep probability (inverted dropout), or use `nn.Dropout`",
                  code="x = x * mask / keep  # or: self.drop = nn.Dropout(p); x = self.drop(x)")
        return Issue(message=message, fix=fix, predicted=predicted,
                     severity=Severity.INFO if normalized else None)

    mean = keep * mask.scale
    second = keep * mask.scale**2
    scaled = "without dividing by it" if mask.scale == 1.0 else f"rescaled by {sig(mask.scale)} instead of {sig(1 / keep)}"
    message = (f"{name} multiplies by a random keep-mask (keep {sig(keep)}) {scaled}: in training the mean is "
               f"x{sig(mean)} and the second moment x{sig(second)}, and in eval, without the mask, the activations "
               f"are {sig(1 / mean)}x the training ones")
    before = graph.ancestors(op)
    upstream = [o for o in graph if o.kind is OpKind.MUL and o.name in before]
    chain = [mask] + [m for m in (_mask_of(graph, o) for o in upstream) if m is not None and _faulty(m)]
    total = 1.0
    for m in chain:
        total *= m.keep * m.scale if m.keep is not None else 1.0
    if len(chain) > 1 and all(m.keep is not None for m in chain):
        before_it = len(chain) - 1
        message += (f"; with {before_it} such mask{'s' if before_it > 1 else ''} before it, the mean is "
                    f"x{sig(total)} here")
    p = 1.0 - keep
    fix = Fix(
        summary=f"Divide the kept values by the keep probability {sig(keep)} (inverted dropout), or use "
                f"`nn.Dropout(p={sig(p)})`",
        code=f"x = x * mask / {sig(keep)}  # or: self.drop = nn.Dropout(p={sig(p)}); x = self.drop(x)",
    )
    return Issue(
        message=message,
        fix=fix,
        predicted={
            "keep_probability": keep,
            "train_mean_factor": mean,
            "train_second_moment_factor": second,
            "eval_over_train": 1.0 / mean,
            "cumulative_mean_factor": total,
        },
        severity=Severity.INFO if normalized else None,
    )


def _faulty(m: _Mask) -> bool:
    return m.keep is not None and 0.0 < m.keep < 1.0 and abs(m.keep * m.scale - 1.0) > TOLERANCE


def _mask_of(graph: ModelGraph, op: Op) -> _Mask | None:
    """``op`` as a product of a tensor with a random keep-mask, or ``None``."""
    if op.kind is not OpKind.MUL or len(op.inputs) != 2:
        return None
    for mask_name, data in ((op.inputs[0], op.inputs[1]), (op.inputs[1], op.inputs[0])):
        found = _keep(graph, mask_name)
        if found is not None:
            keep, scale = found
            return _Mask(keep, scale * _scale_after(graph, op), data)
    return None


def _keep(graph: ModelGraph, name: str) -> tuple[float | None, float] | None:
    """(keep probability, scale) if ``name`` is a random keep-mask, possibly cast and rescaled."""
    scale = 1.0
    op = graph.op(name)
    while op.kind in (OpKind.PASSTHROUGH, OpKind.SCALE) and len(op.inputs) == 1:
        if op.kind is OpKind.SCALE:
            s = op.params
            if not isinstance(s, ScaleParams) or s.shift != 0.0 or s.param is not None:
                return None
            scale *= s.factor
        op = graph.op(op.inputs[0])
    if op.kind is OpKind.RANDOM and isinstance(op.params, RandomParams) and op.params.dist is RandomDist.BERNOULLI:
        return op.params.p, scale
    if op.kind is OpKind.COMPARE and isinstance(op.params, CompareParams) and len(op.inputs) == 1:
        src = graph.op(op.inputs[0])
        while src.kind is OpKind.PASSTHROUGH and len(src.inputs) == 1:
            src = graph.op(src.inputs[0])
        if not (src.kind is OpKind.RANDOM and isinstance(src.params, RandomParams)
                and src.params.dist is RandomDist.UNIFORM):
            return None
        t = op.params.threshold
        if t is None:
            return None, scale
        if op.params.op in ("gt", "ge"):
            return 1.0 - t, scale
        if op.params.op in ("lt", "le"):
            return t, scale
    return None


def _scale_after(graph: ModelGraph, op: Op) -> float:
    """The constant factor applied to ``op``'s output before anything else uses it (``x * mask / keep``)."""
    scale = 1.0
    while True:
        users = graph.consumers(op)
        if len(users) != 1:
            return scale
        nxt = users[0]
        if nxt.kind is OpKind.SCALE and isinstance(nxt.params, ScaleParams):
            if nxt.params.shift != 0.0 or nxt.params.param is not None:
                return scale
            scale *= nxt.params.factor
        elif nxt.kind is not OpKind.PASSTHROUGH:
            return scale
        op = nxt
