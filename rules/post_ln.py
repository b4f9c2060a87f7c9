"""IL204 post-ln."""

from __future__ import annotations

import math
import re

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import NormKind, OpKind
from initlint.patterns import branch_ops, branch_prenormalized, norm_kind, next_stops, residual, sig
from initlint.registry import rule

# Post-LN stacks this deep or deeper get a warning, shallower ones an info. Six layers is the depth of the
# Transformer-base models with which Xiong et al. (2020) and Liu et al. (2020) found Post-LN to need a
# warmup; at 2 and 4 layers the last-layer gradient gap to Pre-LN measured here is 1.02x and 1.08x
# (PyTorch's default init), 1.15x and 1.43x (Xavier everywhere).
WARN_DEPTH = 6
WARMUP_STEPS = 4000  # Vaswani et al. 2017, the schedule Post-LN was introduced with
_LAYER_NORMS = (NormKind.LAYER, NormKind.RMS)
_NORM_NAMES = {NormKind.LAYER: "LayerNorm", NormKind.RMS: "RMSNorm"}
_ATTENTION = frozenset({OpKind.ATTENTION, OpKind.SOFTMAX})
_BLOCK = re.compile(r"^(.*?\.\d+)(\.|$)")


@rule("IL204", "post-ln", severity=Severity.WARNING, needs_weights=False)
def post_ln(graph: ModelGraph) -> Issue | None:
    """
    ## What it does
    Finds Post-LN transformers: residual adds around attention whose sum goes straight into a LayerNorm
    (or RMSNorm), `x = norm(x + sublayer(x))`, as in the original Transformer, BERT and DistilBERT.

    A residual add counts when its output feeds nothing but the norm and its branch does not itself start with
    a norm (that is Pre-LN, `x + sublayer(norm(x))`, even when a final norm follows the last add). At least one
    such add must have attention in its branch. The depth reported is the number of those attention sublayers.

    ## Why is this bad?
    With the norm after the add, the gradient that reaches the last layers at initialization is the same
    whatever the depth, while under Pre-LN it shrinks as 1/σ(x_L), σ(x_L) being the standard deviation of
    the residual stream at the top: about 1/sqrt(L) when each branch adds as much variance as its input
    carries (Xiong et al. 2020, Theorem 1). A learning rate that suits a Pre-LN model therefore gives a
    Post-LN one larger updates in its last layers, by about sqrt(L) in that setting, which is why Post-LN
    needs a learning-rate warmup and still becomes unstable at depth (Liu et al. 2020; Wang et al. 2022).

    Measured here (`nn.TransformerEncoderLayer`, d = 128, at init): the Post-LN/Pre-LN ratio of the last
    layer's feed-forward weight gradient is 1.02, 1.08, 1.22, 1.52, 1.82 at depths 2, 4, 8, 16, 24 with
    PyTorch's default init, and 1.15, 1.43, 1.97, 2.71, 3.45 with Xavier everywhere: it follows the growth
    of the Pre-LN residual stream, so sqrt(L) is the ceiling for branches as strong as their input and the
    gap is smaller with small-init branches. The popular statement that Post-LN gradients *grow toward the
    output* at init did not reproduce: the first/last layer gradient ratio is about 1 (0.7 to 1.4) at every
    depth from 2 to 24, so initlint does not claim it.

    The finding is a warning from 6 layers (the depth at which the papers above needed warmup) and an info
    below, where the gap measured above is under 1.5x.

    ## Example
    ```python
    import torch
    from torch import nn

    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, norm_first=False)
    model = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)
    example_inputs = torch.randn(2, 16, 64)
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, norm_first=True)
    model = nn.TransformerEncoder(layer, 6, norm=nn.LayerNorm(64), enable_nested_tensor=False)
    example_inputs = torch.randn(2, 16, 64)
    ```
    Or keep Post-LN with DeepNorm's constants for the depth, `x = norm(alpha * x + sublayer(x))` with
    alpha = (2L)^(1/4) and the feed-forward, value and output projections initialized with Xavier gain
    beta = (8L)^(-1/4) (encoder-only or decoder-only models), and a learning-rate warmup.

    ## References
    - Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture" (Theorem 1)
    - Liu et al. 2020, "Understanding the Difficulty of Training Transformers"
    - Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers" (DeepNorm)
    """
    post = post_ln_adds(graph)
    depth = sum(1 for *_, attention in post if attention)
    if depth == 0:
        return None

    first_norm, norm = post[0][1], _NORM_NAMES[post[0][2]]
    blocks = list(dict.fromkeys(_block(add.module) for add, _, _, attention in post if attention))
    if len(blocks) > 1 and all(blocks):
        where = f"`{blocks[0]}` to `{blocks[-1]}`"
    elif len(blocks) == 1 and blocks[0] and depth > 1:  # one layer applied again and again (ALBERT)
        where = f"`{blocks[0]}`, applied {depth} times"
    else:
        where = "the model"
    factor = 1.0 / math.sqrt(depth)
    alpha, beta = (2 * depth) ** 0.25, (8 * depth) ** -0.25
    message = (
        f"{depth} Post-LN layer{'s' if depth > 1 else ''} ({where}): {len(post)} residual adds each feed only "
        f"{'an' if norm == 'RMSNorm' else 'a'} `{norm}`, so the last layer's gradient at init does not shrink with depth; Pre-LN's would be "
        f"1/sqrt({depth}) = {sig(factor, 2)} of it with branches as strong as their input"
    )
    fix = Fix(
        summary=(
            f"Move the norm before each sublayer (Pre-LN, with a final norm), or keep Post-LN with DeepNorm's "
            f"constants for {depth} layers (alpha {sig(alpha)}, beta {sig(beta)}); warm the learning rate up "
            f"in both cases"
        ),
        code=(
            "# Pre-LN: x = x + sublayer(norm(x)) in every layer and a final norm after the last one;\n"
            "# nn.TransformerEncoderLayer(..., norm_first=True) with nn.TransformerEncoder(..., norm=nn.LayerNorm(d))\n"
            f"# or DeepNorm for {depth} layers (Wang et al. 2022): x = norm({sig(alpha)} * x + sublayer(x)) and\n"
            f"# nn.init.xavier_normal_(w, gain={sig(beta)}) on the feed-forward, value and output projections;\n"
            f"# and a warmup, e.g. linear over the first {WARMUP_STEPS} steps:\n"
            f"scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / "
            f"{WARMUP_STEPS}))"
        ),
    )
    return Issue(
        message=message,
        fix=fix,
        predicted={
            "layers": depth,
            "post_ln_adds": len(post),
            "pre_ln_last_layer_gradient_factor": factor,
            "deepnorm_alpha": alpha,
            "deepnorm_beta": beta,
        },
        severity=Severity.WARNING if depth >= WARN_DEPTH else Severity.INFO,
        op=first_norm.name,
    )


def post_ln_adds(graph: ModelGraph) -> list[tuple]:
    """The Post-LN residual adds in graph order, each as (add, the norm after it, its NormKind, whether its branch
    has attention): shared with IL204's probe and repair."""
    post = []
    for op in graph.of_kind(OpKind.ADD):
        res = residual(graph, op)
        if res is None:
            continue
        stops = next_stops(graph, op)
        kinds = {norm_kind(graph, s) for s in stops}
        if not stops or not kinds <= set(_LAYER_NORMS) or branch_prenormalized(graph, res):
            continue
        attention = any(graph.op(n).kind in _ATTENTION for n in branch_ops(graph, res))
        post.append((op, stops[0], kinds.pop(), attention))
    return post


def block_of(module: str) -> str:
    """The block a module path belongs to: ``layers.3`` for ``layers.3.self_attn``; the path itself otherwise."""
    match = _BLOCK.match(module)
    return match.group(1) if match else module


_block = block_of
