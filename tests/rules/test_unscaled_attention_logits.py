"""IL205 unscaled-attention-logits: attention logits whose predicted std at init saturates the softmax."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from initlint import lint
from initlint.capture import capture
from initlint.findings import Severity
from initlint.load import from_instance
from initlint.ops import OpKind
from initlint.propagate import propagate

# Logit variance of a seeded layer against a forward pass over 4 x 128 x 128 logits: the prediction uses the
# weights' second moments, the measurement also their spectrum (a few percent at d_k = 64); 5%.
LOGIT_TOL = 0.05
# The entropy of Gaussian logits against that of the real softmax rows: q.k sums of 64 products are close to
# Gaussian but each query has its own norm; measured 0.349 against 0.342 and 3.50 against 3.47 here. 5%.
ENTROPY_TOL = 0.05


class Attention(nn.Module):
    """Single-head attention, Xavier projections d -> d_k as in measured-claims claim 9."""

    def __init__(self, d=512, d_k=64, scaled=False, mask=False):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d_k), nn.Linear(d, d_k), nn.Linear(d, d_k)
        for m in (self.q, self.k, self.v):
            nn.init.xavier_normal_(m.weight)
        self.d_k, self.scaled, self.mask = d_k, scaled, mask

    def logits(self, x):
        scores = self.q(x) @ self.k(x).transpose(-2, -1)
        return scores / math.sqrt(self.d_k) if self.scaled else scores

    def forward(self, x):
        scores = self.logits(x)
        if self.mask:
            n = x.shape[1]
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        return scores.softmax(dim=-1) @ self.v(x)


def attention(**kw):
    torch.manual_seed(0)
    return Attention(**kw), torch.randn(4, 128, 512)


def findings(model, x):
    report = lint(model, x, select=["IL205"])
    assert report.targets[0].error is None, report.targets[0].error
    return report.findings


def measured(model, x):
    """Logit variance across keys, mean entropy and top weight of the real softmax rows."""
    with torch.no_grad():
        logits = model.logits(x)
        logp = logits.log_softmax(-1)
    p = logp.exp()
    return logits.var(-1).mean().item(), -(p * logp).sum(-1).mean().item(), p.max(-1).values.mean().item()


def test_claim_9_without_the_scale_is_an_error():
    model, x = attention()
    (f,) = findings(model, x)
    p = f.predicted
    variance, entropy, top = measured(model, x)
    assert variance == pytest.approx(203, rel=LOGIT_TOL)  # measured-claims: unscaled 203
    assert p["logit_variance"] == pytest.approx(variance, rel=LOGIT_TOL)
    assert p["entropy"] == pytest.approx(entropy, rel=ENTROPY_TOL)
    assert p["top_key_weight"] == pytest.approx(top, rel=ENTROPY_TOL)
    assert p["ln_keys"] == pytest.approx(math.log(128)) and p["keys"] == 128 and p["head_dim"] == 64
    assert f.severity is Severity.ERROR  # about 1.4 effective keys
    assert p["effective_keys"] < 2
    assert f.message == (
        f"the model has attention logits of std {p['logit_std']:.3g} at init (variance {p['logit_variance']:.3g}): "
        f"softmax entropy {p['entropy']:.2g} against ln(128) = 4.85, {100 * p['top_key_weight']:.2g}% of a query's "
        "weight on its top key"
    )
    assert f.fix.summary == "Scale the logits by 1/sqrt(64) = 0.125"
    assert f.fix.code == "scores = q @ k.transpose(-2, -1) / math.sqrt(64)"
    # with the scale the logit variance is 3.16, not 1: Xavier d -> d_k gives q and k 2d/(d + d_k) = 1.78
    assert p["logit_std_after_fix"] ** 2 == pytest.approx(3.16, rel=LOGIT_TOL)


def test_with_the_scale_claim_9_is_clean_at_variance_3_16():
    model, x = attention(scaled=True)
    assert findings(model, x) == []
    variance, entropy, _ = measured(model, x)
    assert variance == pytest.approx(3.16, rel=LOGIT_TOL)
    assert entropy == pytest.approx(3.48, rel=ENTROPY_TOL)  # against ln(128) = 4.85


def test_a_causal_mask_does_not_hide_the_logits():
    model, x = attention(mask=True)
    (f,) = findings(model, x)
    assert f.predicted["logit_variance"] == pytest.approx(203, rel=LOGIT_TOL)


class MHA(nn.Module):
    def __init__(self, d=256, heads=4, gain=1.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        with torch.no_grad():
            self.attn.in_proj_weight.mul_(gain)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def mha_logit_variance(model, x):
    a = model.attn
    e, h = a.embed_dim, a.num_heads
    q, k, _ = F.linear(x, a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1)
    q, k = (t.unflatten(-1, (h, e // h)).transpose(1, 2) for t in (q, k))
    with torch.no_grad():
        return (q @ k.transpose(-2, -1) / math.sqrt(e // h)).var(-1).mean().item()


def test_multihead_attention_default_init_is_clean_at_a_quarter():
    torch.manual_seed(0)
    model, x = MHA(), torch.randn(2, 64, 256)
    assert findings(model, x) == []
    assert mha_logit_variance(model, x) == pytest.approx(0.25, rel=2 * LOGIT_TOL)  # claim 9: packed 0.25


def test_a_large_packed_projection_is_fixed_by_rescaling_its_q_and_k_rows():
    torch.manual_seed(0)
    model, x = MHA(gain=4.0), torch.randn(2, 64, 256)
    (f,) = findings(model, x)
    assert f.severity is Severity.ERROR
    assert f.predicted["logit_variance"] == pytest.approx(mha_logit_variance(model, x), rel=LOGIT_TOL)
    assert f.fix.code.startswith('with torch.no_grad():\n    model.get_parameter("attn.in_proj_weight")[:512].mul_(')
    factor = f.predicted["qk_weight_factor"]
    assert factor == pytest.approx(f.predicted["logit_variance"] ** -0.25)
    assert f.fix.code.endswith(f".mul_({factor:.3g})")
    exec(f.fix.code, {"torch": torch, "model": model})
    assert mha_logit_variance(model, x) == pytest.approx(1.0, rel=2 * LOGIT_TOL)
    assert findings(model, x) == []


class Fused(nn.Module):
    """q, k, v from one linear layer into ``F.scaled_dot_product_attention`` with a given scale."""

    def __init__(self, d=256, heads=4, scale=None, q_std=None):
        super().__init__()
        self.qkv, self.heads, self.scale = nn.Linear(d, 3 * d, bias=False), heads, scale
        nn.init.normal_(self.qkv.weight, std=d**-0.5)  # unit-variance q, k, v
        if q_std is not None:  # T5: the query projection carries the 1/sqrt(d_k)
            nn.init.normal_(self.qkv.weight[:d], std=q_std)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale, is_causal=True)


def fused(**kw):
    torch.manual_seed(0)
    return Fused(**kw), torch.randn(2, 128, 256)


def test_scale_one_in_the_fused_call_is_found_and_the_default_is_clean():
    (f,) = findings(*fused(scale=1.0))
    assert f.predicted["logit_std"] == pytest.approx(8.0, rel=LOGIT_TOL)  # sqrt(d_k = 64) with unit q and k
    assert f.severity is Severity.ERROR  # over 128 keys, fewer than 2 effective keys from a std of about 7.7
    assert f.fix.summary == "Use the default scale 1/sqrt(64) = 0.125 in the attention call"
    assert findings(*fused()) == []


def test_scale_folded_into_the_query_init_as_t5_does_is_clean():
    assert findings(*fused(scale=1.0, q_std=(256 * 64) ** -0.5)) == []


def test_near_misses_around_a_logit_std_of_3():
    # unit k, q of variance v: logits of variance v with the default scale (per-head d_k = 64)
    for v, found in ((2.7**2, False), (3.3**2, True)):
        model, x = fused(q_std=math.sqrt(v / 256))
        got = findings(model, x)
        assert bool(got) is found, v
        if got:
            assert got[0].severity is Severity.WARNING
            assert got[0].predicted["logit_std"] == pytest.approx(3.3, rel=LOGIT_TOL)


def test_a_prediction_resting_on_an_unknown_op_is_not_trusted():
    class Odd(Attention):
        def logits(self, x):
            q = self.q(x)
            q = q.abs() * torch.sign(q)  # q itself, through an op the engine has no transfer function for
            return q @ self.k(x).transpose(-2, -1) / math.sqrt(self.d_k)

    torch.manual_seed(0)
    model, x = Odd(), torch.randn(4, 128, 512)
    graph = propagate(capture(from_instance(model, x)))
    assert [op.target for op in graph.of_kind(OpKind.UNKNOWN)] == ["torch.sign"]
    softmax = graph.of_kind(OpKind.SOFTMAX)[0]
    assert graph.signal(softmax.inputs[0]).forward.variance > 9.0  # the fallback's estimate: std over 3
    assert findings(model, x) == []  # the real one is 3.16
