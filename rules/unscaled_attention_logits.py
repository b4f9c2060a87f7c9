"""IL205 unscaled-attention-logits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import Op, OpKind
from initlint.patterns import is_norm, sig
from initlint.registry import rule

# Reported from a logit std of 3 (variance 9): three times the std that 1/sqrt(d_k) is designed to give with
# unit-variance queries and keys (Vaswani et al. 2017), and above the 1.78 that Xavier-initialized d -> d_k
# projections give with the scale (measured-claims, claim 9; not a defect). At std 3 over 128 keys a query gives
# its top key 42% of its weight and its entropy is 45% of ln(n).
WARN_STD = 3.0
# An error when each query effectively attends to two keys or fewer (exp(entropy) <= 2): attention is a
# random hard choice at init. Over 128 keys that is from a logit std of about 7.7.
ERROR_KEYS = 2.0
TARGET_VARIANCE = 1.0  # what 1/sqrt(d_k) aims at, and what the re-initialization fix restores
_SCALE_TOL = 0.05  # a scale within 5% of 1/sqrt(d_k) is that scale
_LOGIT_PATH = frozenset({OpKind.PASSTHROUGH, OpKind.SCALE})
_MERGES = frozenset({OpKind.ADD, OpKind.SUB, OpKind.WHERE})  # masks and position biases
_PROJECTIONS = frozenset({OpKind.LINEAR, OpKind.CONV})
SAMPLES = 1 << 18  # logits drawn for the entropy: about 0.5% precision
SEED = 0


@dataclass(frozen=True)
class Logits:
    at: Op  # the op whose finding it is: the fused attention, or the softmax
    variance: float
    keys: int
    head_dim: int | None
    scale: float | None  # the scale applied to q k^T (None: not known)
    operands: tuple[Op, Op]  # q and k as they enter the product
    fused: bool


@rule("IL205", "unscaled-attention-logits", applies_to={OpKind.ATTENTION, OpKind.SOFTMAX},
      severity=Severity.WARNING, needs_signals=True)
def unscaled_attention_logits(op: Op, graph: ModelGraph) -> Issue | None:
    """
    ## What it does
    Finds attention whose logits `q k^T * scale` have a predicted standard deviation at init large enough to
    saturate the softmax, typically because the `1/sqrt(d_k)` scale is missing or the query and key
    projections are initialized too large.

    It reads `F.scaled_dot_product_attention` (and `nn.MultiheadAttention`, which calls it) with its `scale`,
    and hand-written attention: a softmax over the last dimension of a product `q @ k.transpose(-2, -1)`,
    possibly scaled, masked or biased on the way. The logit variance is the variance engine's: for the fused
    op `scale^2 * d_k * E[q^2] * Var(k)`, for hand-written attention the predicted variance of the scaled
    product before any mask or bias is added. Scaling folded into the weights, as T5 does (its query
    projection is initialized with std `(d_model * d_kv)^-1/2` and attention is called with scale 1), is not a
    finding: the prediction sees the small queries.

    Where the queries or keys are computed, between their projections and the product, by an op initlint has
    no transfer function for, the prediction is not trusted and nothing is reported.

    ## Why is this bad?
    With logits of standard deviation s over n keys, the softmax puts most of each query's weight on one
    key: the attention entropy falls from ln(n) and gradients reach only the few keys that win, at random, at
    init. Low attention entropy goes with unstable training (Zhai et al. 2023). Over 128 keys, measured on
    Gaussian logits: at s = 1.78 the entropy is 3.47 of ln(128) = 4.85 and the top key gets 20%; at s = 3, 2.18
    and 42%; at s = 14.2, 0.35 and 87%.

    Measured (`measured-claims.md`, claim 9, d = 512, d_k = 64, n = 128): Xavier projections d -> d_k give q
    and k a variance of 2d/(d + d_k) = 1.78, not 1, so the logit variance with `1/sqrt(d_k)` is 3.16 (the
    engine predicts 3.15; not reported), and without the scale 203 (predicted 202): std 14.2, entropy 0.35
    against ln(n) = 4.85. `nn.MultiheadAttention`'s packed projection, Xavier over `(3d, d)`, gives 0.25. T5
    with its query projection initialized like its key projection (the folded scale removed, attention still
    called with scale 1, d_kv = 16): predicted 16.0, measured 14.5 over 64 sequences.

    The finding is a warning from a logit std of 3, three times what `1/sqrt(d_k)` aims at and above the 1.78
    of the healthy Xavier case, and an error when each query effectively attends to two keys or fewer
    (exp(entropy) <= 2: over 128 keys, from a std of about 7.7). The entropy is that of a query over all n keys.

    ## Example
    ```python
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, d=512, d_k=64):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(d, d_k), nn.Linear(d, d_k), nn.Linear(d, d_k)
            for m in (self.q, self.k, self.v):
                nn.init.xavier_normal_(m.weight)

        def forward(self, x):
            scores = self.q(x) @ self.k(x).transpose(-2, -1)
            return scores.softmax(dim=-1) @ self.v(x)

    torch.manual_seed(0)
    model = Attention()
    example_inputs = torch.randn(4, 128, 512)
    ```

    ## Use instead
    ```python
    import math
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, d=512, d_k=64):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(d, d_k), nn.Linear(d, d_k), nn.Linear(d, d_k)
            for m in (self.q, self.k, self.v):
                nn.init.xavier_normal_(m.weight)
            self.d_k = d_k

        def forward(self, x):
            scores = self.q(x) @ self.k(x).transpose(-2, -1) / math.sqrt(self.d_k)
            return scores.softmax(dim=-1) @ self.v(x)

    torch.manual_seed(0)
    model = Attention()
    example_inputs = torch.randn(4, 128, 512)
    ```

    ## References
    - Vaswani et al. 2017, "Attention Is All You Need" (section 3.2.1 and footnote 4: the 1/sqrt(d_k) scale)
    - Zhai et al. 2023, "Stabilizing Transformer Training by Preventing Attention Entropy Collapse"
    - Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer"
      (T5 folds the scale into the query initialization)
    """
    logits = _fused(op, graph) if op.kind is OpKind.ATTENTION else _written(op, graph)
    if logits is None or not logits.variance > 0.0 or logits.keys < 2:
        return None
    std = math.sqrt(logits.variance)
    if std < WARN_STD or any(_rests_on_unknown(graph, x) for x in logits.operands):
        return None
    st = _softmax_entropy(logits.keys, _key(logits.variance))
    severity = Severity.ERROR if st.effective_keys <= ERROR_KEYS else Severity.WARNING
    ln_n = math.log(logits.keys)
    where = f"`{op.module}`" if op.module else "the model"
    message = (
        f"{where} has attention logits of std {sig(std)} at init (variance {sig(logits.variance)}): softmax "
        f"entropy {sig(st.entropy, 2)} against ln({logits.keys}) = {sig(ln_n)}, {sig(100 * st.top, 2)}% of a "
        f"query's weight on its top key"
    )
    fix, after, qk_factor = _fix(graph, logits)
    predicted = {
        "logit_std": std,
        "logit_variance": logits.variance,
        "keys": logits.keys,
        "entropy": st.entropy,
        "ln_keys": ln_n,
        "effective_keys": st.effective_keys,
        "top_key_weight": st.top,
        "scale": logits.scale,
        "head_dim": logits.head_dim,
        "logit_std_after_fix": math.sqrt(after),
        "qk_weight_factor": qk_factor,
    }
    return Issue(message=message, fix=fix, predicted=predicted, severity=severity)


# -- finding the logits ------------------------------------------------------------------------------------


def _second(graph: ModelGraph, op: Op) -> float | None:
    s = graph.signal(op)
    return None if s is None else s.forward.second


def _fused(op: Op, graph: ModelGraph) -> Logits | None:
    if len(op.inputs) < 3 or op.params is None:
        return None
    q, k = graph.op(op.inputs[0]), graph.op(op.inputs[1])
    sq, sk = graph.signal(q), graph.signal(k)
    if sq is None or sk is None or not q.shape or not k.shape:
        return None
    d = op.params.head_dim or q.shape[-1]
    keys = op.params.seq_len or k.shape[-2]
    scale = op.params.scale if op.params.scale is not None else 1.0 / math.sqrt(d)
    variance = scale * scale * d * sq.forward.second * sk.forward.variance * _packed_correction(graph, q, k)
    return Logits(op, variance, keys, d, scale, (q, k), fused=True)


def _written(op: Op, graph: ModelGraph) -> Logits | None:
    """A softmax over the last dimension of ``q @ k^T``, scaled, masked or biased on the way."""
    x = graph.op(op.inputs[0]) if op.inputs else None
    if x is None or not x.shape or op.params is None or op.params.log:
        return None
    if op.params.dim not in (-1, len(x.shape) - 1):
        return None
    path = _product_path(graph, x)
    if path is None:
        return None
    product, after = path
    if len(product.inputs) != 2:
        return None
    logits = after[-1] if after else product
    s = graph.signal(logits)
    if s is None:
        return None
    q, k = (graph.op(n) for n in product.inputs)
    scales = list(after) + [o for x in (q, k) for o in _operand_scales(graph, x)]
    scale = math.prod(abs(o.params.factor) for o in scales if o.kind is OpKind.SCALE and o.params is not None)
    head_dim = product.params.contracted if product.params is not None else None
    variance = s.forward.variance * _packed_correction(graph, q, k)
    return Logits(op, variance, x.shape[-1], head_dim, scale, (q, k), fused=False)


def _product_path(graph: ModelGraph, x: Op) -> tuple[Op, list[Op]] | None:
    """The product ``q @ k^T`` behind a softmax's input and the scales and reshapes from it to the first mask
    or bias (in forward order), or ``None`` when the input is not such a product."""
    op, seen = x, 0
    trail: list[Op] = []
    while seen < 32:
        seen += 1
        if op.kind is OpKind.MATMUL:
            return op, trail[::-1]
        if op.kind in _LOGIT_PATH:
            signals = [n for n in op.inputs if graph.op(n).kind is not OpKind.PARAM]
            if len(signals) != 1:
                return None
            trail.append(op)
            op = graph.op(signals[0])
        elif op.kind in _MERGES:
            scores = [n for n in op.inputs if _reaches_product(graph, graph.op(n))]
            if len(scores) != 1:
                return None
            trail = []  # the logits are what comes before the mask or bias
            op = graph.op(scores[0])
        else:
            return None
    return None


def _packed_correction(graph: ModelGraph, q: Op, k: Op) -> float:
    """For q and k sliced out of one packed projection (``nn.MultiheadAttention``'s ``in_proj_weight``, a
    ``qkv`` linear), how much their logit variance differs from the engine's, which gives every slice the
    whole projection's second moment: E[W_q^2] E[W_k^2] / E[W^2]^2 over the q rows, the k rows and all rows."""
    _, q_layers = _local(graph, q)
    _, k_layers = _local(graph, k)
    if len(q_layers) != 1 or q_layers != k_layers:
        return 1.0
    w = q_layers[0].weight
    if w is None or w.tensor is None or w.tensor.dim() < 2 or w.tensor.shape[0] % 3 or not w.second_moment > 0:
        return 1.0
    rows = w.tensor.shape[0] // 3
    t = w.tensor.detach().float()
    wq, wk = t[:rows].square().mean().item(), t[rows:2 * rows].square().mean().item()
    return wq * wk / w.second_moment**2


def _operand_scales(graph: ModelGraph, op: Op) -> list[Op]:
    """Constant scales applied to a query or key since its projection (``q = q * d_k ** -0.5``)."""
    seen, _ = _local(graph, op)
    return [graph.op(n) for n in seen if graph.op(n).kind is OpKind.SCALE and graph.op(n).params is not None
            and graph.op(n).params.param is None and graph.op(n).params.shift == 0.0]


def _reaches_product(graph: ModelGraph, op: Op) -> bool:
    for _ in range(32):
        if op.kind is OpKind.MATMUL:
            return True
        if op.kind not in _LOGIT_PATH | _MERGES or not op.inputs:
            return False
        op = graph.op(op.inputs[0])
    return False


def _local(graph: ModelGraph, op: Op) -> tuple[set[str], list[Op]]:
    """The ops computing ``op`` since the nearest weight layers or norms, and those weight layers."""
    seen: set[str] = set()
    layers: dict[str, Op] = {}
    stack = [op.name]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        o = graph.op(name)
        if o.kind in _PROJECTIONS:
            layers[name] = o
            continue
        if o.kind in (OpKind.NORM, OpKind.INPUT, OpKind.EMBEDDING) or is_norm(graph, o):
            continue
        stack.extend(o.inputs)
    return seen, sorted(layers.values(), key=graph.position)  # in graph order, without a walk over the graph


def _rests_on_unknown(graph: ModelGraph, op: Op) -> bool:
    """Whether ``op`` is computed from its projection through an op with no transfer function, whose estimate
    is only its first operand's (Llama's rotary tables come out of ``torch.export``'s grad-mode wrapper)."""
    seen, _ = _local(graph, op)
    return any(graph.op(n).kind is OpKind.UNKNOWN for n in seen)


# -- the softmax at those logits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Entropy:
    entropy: float
    top: float  # mean weight of the top key

    @property
    def effective_keys(self) -> float:
        return math.exp(self.entropy)


def _key(variance: float) -> float:
    return float(f"{variance:.4g}")


@lru_cache(maxsize=256)
def _softmax_entropy(keys: int, variance: float) -> Entropy:
    """Mean entropy and top weight of ``softmax(l)`` over ``keys`` Gaussian logits of ``variance`` (fixed-seed
    Monte Carlo, as :mod:`initlint.softmax` does)."""
    gen = torch.Generator().manual_seed(SEED)
    rows = max(1, SAMPLES // keys)
    logits = torch.randn(rows, keys, generator=gen, dtype=torch.float64) * math.sqrt(variance)
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    return Entropy(float(-(p * logp).sum(-1).mean()), float(p.max(-1).values.mean()))


# -- the fix -----------------------------------------------------------------------------------------------


def _fix(graph: ModelGraph, logits: Logits) -> tuple[Fix, float, float | None]:
    """The fix, the logit variance it leads to and the factor on the q and k weights (when that is the fix)."""
    d = logits.head_dim
    scaled = d is not None and logits.scale is not None and abs(logits.scale * math.sqrt(d) - 1) <= _SCALE_TOL
    if d and logits.scale is not None and not scaled:
        after = logits.variance / (logits.scale * logits.scale * d)
        if math.sqrt(after) < WARN_STD:
            if logits.fused:
                return Fix(
                    summary=f"Use the default scale 1/sqrt({d}) = {sig(1 / math.sqrt(d))} in the attention call",
                    code="out = F.scaled_dot_product_attention(q, k, v)  # scale=None: 1/math.sqrt(q.size(-1))",
                ), after, None
            factor = 1.0 / (logits.scale * math.sqrt(d))
            how = f"/ math.sqrt({d})" if abs(logits.scale - 1.0) <= _SCALE_TOL else f"* {sig(factor)}"
            return Fix(
                summary=f"Scale the logits by 1/sqrt({d}) = {sig(1 / math.sqrt(d))}",
                code=f"scores = q @ k.transpose(-2, -1) {how}",
            ), after, None
    factor = (TARGET_VARIANCE / logits.variance) ** 0.25
    lines = _rescale_code(graph, logits, factor)
    summary = (f"Scale the query and key projections' weights by {sig(factor)}, which brings the logit variance "
               f"to {sig(TARGET_VARIANCE, 2)}")
    if not lines:
        summary = f"Scale the logits by {sig(factor * factor)}, which brings their variance to {sig(TARGET_VARIANCE, 2)}"
        lines = f"scores = scores * {sig(factor * factor)}"
    return Fix(summary=summary, code=lines), TARGET_VARIANCE, factor


def _rescale_code(graph: ModelGraph, logits: Logits, factor: float) -> str:
    layers = []
    for operand in logits.operands:
        _, found = _local(graph, operand)
        if len(found) != 1 or found[0].weight is None:
            return ""
        layers.append(found[0])
    q, k = layers
    if q.name == k.name:  # one packed projection, as nn.MultiheadAttention's in_proj_weight: q and k rows only
        w = q.weight
        rows = w.shape[0] // 3 * 2 if w.shape and w.shape[0] % 3 == 0 else None
        if rows is None:
            return ""
        names = [f'model.get_parameter("{w.name}")[:{rows}]']
        names += [f'model.get_parameter("{q.bias.name}")[:{rows}]'] if q.bias is not None else []
    else:
        names = [f'model.get_parameter("{w.name}")' for layer in (q, k)
                 for w in (layer.weight, layer.bias) if w is not None]
    body = "".join(f"    {n}.mul_({sig(factor)})\n" for n in names)
    return "with torch.no_grad():\n" + body.rstrip("\n")
