"""The variance engine against closed forms and the measured claims (shared/reference/measured-claims.md).

Each test builds a small seeded model, predicts statically and compares with a formula; where a formula
depends on the drawn weights it uses their actual statistics, so the tolerances below are about the engine's
numerics, not about sampling.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from initlint.capture import capture
from initlint.gains import activation_gain
from initlint.graph import Moments
from initlint.load import from_instance
from initlint.ops import Activation, ActivationParams, OpKind
from initlint.propagate import predict, propagate
from initlint.attention import logit_variance

EXACT = 1e-6  # relative: the engine evaluates the same closed form (float64 arithmetic)
FLOAT32 = 1e-5  # relative: the same closed form, with weight statistics computed in float32
QUADRATURE = 2e-3  # relative: grid integration of a kinked function (ReLU) on 400 nodes
MONTE_CARLO = 0.02  # relative: against 10^6 Gaussian draws (standard error about 0.2%, kink effects)
SAMPLING = 0.1  # relative: a closed form in expectation over ~2000 drawn weights (standard error 3%)
CLAIM = 0.05  # relative: a measured claim (measured-claims.md reports about 2% precision) vs this model's draw
JENSEN = 0.05  # relative: x * rsqrt(mean(x^2)) taken as independent factors: +2/count (3% at count 64)


def _graph(model: nn.Module, *inputs, force: str | None = None, stats: bool = False):
    """Captured and propagated; inputs are unit Gaussians unless ``stats`` (then: the example's statistics)."""
    target = from_instance(model, inputs if len(inputs) > 1 else inputs[0])
    return propagate(capture(target, force), target.inputs if stats else None, model=model)


def _first(graph, kind: OpKind, nth: int = 0):
    return [op for op in graph if op.kind is kind][nth]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- weight layers ---------------------------------------------------------------------------------------------


def test_linear_keeps_variance_at_std_one_over_sqrt_fan_in():
    lin = nn.Linear(512, 256, bias=False)
    nn.init.normal_(lin.weight, std=1 / math.sqrt(512))
    g = _graph(lin, torch.randn(64, 512))
    op = _first(g, OpKind.LINEAR)
    q_in = g.signal(_first(g, OpKind.INPUT)).forward.second
    out = g.signal(op).forward.second
    assert _rel(out, 512 * op.weight.second_moment * q_in) < FLOAT32  # fan_in * E[W^2] * E[x^2]
    assert abs(out - 1.0) < CLAIM  # and that is 1 for this init


def test_linear_backward_is_fan_out_times_weight_second_moment():
    lin = nn.Linear(128, 64, bias=False)
    g = _graph(lin, torch.randn(32, 128))
    x = _first(g, OpKind.INPUT)
    assert _rel(g.signal(x).backward.second, 64 * lin.weight.detach().pow(2).mean().item()) < FLOAT32


def test_xavier_gives_2_fan_in_over_fan_in_plus_fan_out():  # claim 1
    lin = nn.Linear(1024, 256, bias=False)
    nn.init.xavier_normal_(lin.weight)
    g = _graph(lin, torch.randn(8, 1024))
    assert _rel(g.signal(_first(g, OpKind.LINEAR)).forward.second / g.signal(_first(g, OpKind.INPUT)).forward.second,
                1.6) < CLAIM


def test_depthwise_conv_uses_its_true_fans():  # claim 3: torch's xavier is 128x too small here
    conv = nn.Conv2d(256, 256, 3, groups=256, bias=False)
    nn.init.xavier_normal_(conv.weight)
    g = _graph(conv, torch.randn(2, 256, 12, 12), force="fx")
    op = _first(g, OpKind.CONV)
    assert (op.weight.fan_in, op.weight.fan_out) == (9, 9)
    ratio = g.signal(op).forward.second / g.signal(_first(g, OpKind.INPUT)).forward.second
    assert _rel(ratio, 9 * op.weight.second_moment) < FLOAT32  # no padding: every output sums 9 terms
    assert _rel(ratio, 9 * 2 / (9 + 2304)) < SAMPLING  # what xavier draws from torch's fans (9, 2304)
    back = g.signal(_first(g, OpKind.INPUT)).backward.second / g.signal(op).backward.second
    assert _rel(back, 9 * (2.5 / 3) ** 2 * op.weight.second_moment) < FLOAT32  # 9 outputs fed, fewer at borders


def test_grouped_conv_sums_in_over_groups_times_taps():
    conv = nn.Conv2d(64, 32, 3, groups=4, bias=False)
    g = _graph(conv, torch.randn(2, 64, 10, 10))
    op = _first(g, OpKind.CONV)
    ratio = g.signal(op).forward.second / g.signal(_first(g, OpKind.INPUT)).forward.second
    assert _rel(ratio, 64 / 4 * 9 * op.weight.second_moment) < FLOAT32


def test_zero_padding_removes_taps_at_the_borders():
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    g = _graph(conv, torch.randn(2, 16, 4, 4))
    op = _first(g, OpKind.CONV)
    ratio = g.signal(op).forward.second / g.signal(_first(g, OpKind.INPUT)).forward.second
    assert _rel(ratio, 16 * 9 * (2.5 / 3) ** 2 * op.weight.second_moment) < FLOAT32  # 2.5 of 3 taps per dim


def test_transposed_conv_with_xavier_averages_to_one_over_s_squared():  # claim 4
    up = nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1, bias=False)
    nn.init.xavier_normal_(up.weight)
    g = _graph(up, torch.randn(1, 64, 64, 64))  # large: the borders' missing taps cost 3%
    op = _first(g, OpKind.CONV)
    assert op.weight.fan_in == 64 * 16 / 4  # terms per output, averaged over the 4 phases
    ratio = g.signal(op).forward.second / g.signal(_first(g, OpKind.INPUT)).forward.second
    assert abs(ratio - 0.25) < 0.25 * CLAIM


# -- activations -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", [0.5, 2.0, 8.0])
def test_relu_halves_the_second_moment_and_has_mean_sqrt_v_over_2_pi(variance):
    g = activation_gain(ActivationParams(Activation.RELU), Moments(variance))
    assert _rel(g.forward.second, variance / 2) < QUADRATURE
    assert _rel(g.forward.mean, math.sqrt(variance / (2 * math.pi))) < QUADRATURE
    assert _rel(g.backward, 0.5) < QUADRATURE


@pytest.mark.parametrize("fn", [Activation.TANH, Activation.SIGMOID, Activation.GELU, Activation.SILU])
@pytest.mark.parametrize("variance", [0.01, 1.0, 100.0])
def test_gains_depend_on_the_input_variance(fn, variance):
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * math.sqrt(variance)
    x.requires_grad_(True)
    f = {Activation.TANH: torch.tanh, Activation.SIGMOID: torch.sigmoid, Activation.GELU: nn.functional.gelu,
         Activation.SILU: nn.functional.silu}[fn]
    y = f(x)
    (d,) = torch.autograd.grad(y.sum(), x)
    g = activation_gain(ActivationParams(fn), Moments(variance))
    assert _rel(g.forward.second, y.detach().pow(2).mean().item()) < MONTE_CARLO
    assert _rel(g.backward, d.pow(2).mean().item()) < MONTE_CARLO


def test_tanh_is_linear_for_small_inputs_and_saturates_for_large_ones():
    small = activation_gain(ActivationParams(Activation.TANH), Moments(1e-3)).forward.second
    large = activation_gain(ActivationParams(Activation.TANH), Moments(1e3)).forward.second
    assert _rel(small, 1e-3) < 0.01 and large > 0.97


# -- sums, products, shared sources ------------------------------------------------------------------------------


class Twice(nn.Module):
    def forward(self, x):
        return x + x


class SiLUByHand(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


def test_x_plus_x_quadruples_forward_and_backward():
    g = _graph(Twice(), torch.randn(64, 32))
    x, add = _first(g, OpKind.INPUT), _first(g, OpKind.ADD)
    assert _rel(g.signal(add).forward.second, 4 * g.signal(x).forward.second) < EXACT
    assert _rel(g.signal(x).backward.second, 4 * g.signal(add).backward.second) < EXACT


def test_a_function_of_one_source_is_integrated_jointly():
    g = _graph(SiLUByHand(), torch.randn(64, 32))
    mul = _first(g, OpKind.MUL)
    silu = activation_gain(ActivationParams(Activation.SILU), g.signal(_first(g, OpKind.INPUT)).forward)
    assert _rel(g.signal(mul).forward.second, silu.forward.second) < QUADRATURE  # not E[x^2] E[sigmoid^2]


class Branches(nn.Module):
    def __init__(self, n: int, width: int = 256):
        super().__init__()
        self.branches = nn.ModuleList(nn.Linear(width, width) for _ in range(n))
        for b in self.branches:
            nn.init.kaiming_normal_(b.weight, nonlinearity="relu")
            nn.init.zeros_(b.bias)
        self.n = n

    def forward(self, x):
        out = torch.relu(self.branches[0](x))
        for b in self.branches[1:]:
            out = out + torch.relu(b(x))
        return out / math.sqrt(self.n)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_relu_branches_add_their_means_coherently(n):  # claim 6: 1 + (N - 1)/pi, not 1
    g = _graph(Branches(n), torch.randn(64, 256))
    out = [op for op in g if op.kind is OpKind.SCALE][-1]
    q_in = g.signal(_first(g, OpKind.INPUT)).forward.second
    assert _rel(g.signal(out).forward.second / q_in, 1 + (n - 1) / math.pi) < CLAIM


class Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1, bias=False), nn.Conv2d(3, 24, 1, bias=False)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


def test_concat_is_the_width_weighted_average():
    g = _graph(Cat(), torch.randn(2, 3, 8, 8))
    a, b = (g.signal(op).forward.second for op in g.of_kind(OpKind.CONV))
    assert _rel(g.signal(_first(g, OpKind.CONCAT)).forward.second, (8 * a + 24 * b) / 32) < EXACT


class LayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((32,), 0.1))

    def forward(self, x):
        return x * self.gamma / math.sqrt(2)


def test_scaling_by_constants_and_parameters_squares_the_factor():
    g = _graph(LayerScale(), torch.randn(16, 32))
    q_in = g.signal(_first(g, OpKind.INPUT)).forward.second
    last = [op for op in g if op.kind is OpKind.SCALE][-1]
    assert _rel(g.signal(last).forward.second, q_in * 0.01 / 2) < EXACT


# -- norms ------------------------------------------------------------------------------------------------------


def test_norms_reset_the_scale_to_their_affine_weight():
    bn, ln = nn.BatchNorm1d(64), nn.LayerNorm(64)
    nn.init.constant_(bn.weight, 2.0)
    nn.init.constant_(ln.weight, 0.5)
    for norm, expected in ((bn, 4.0), (ln, 0.25)):
        g = _graph(nn.Sequential(nn.Linear(64, 64), norm), 10 * torch.randn(128, 64))
        assert _rel(g.signal(_first(g, OpKind.NORM)).forward.second, expected) < 1e-3  # eps / variance


class RMSNormByHand(nn.Module):
    def __init__(self, d: int = 64):
        super().__init__()
        self.weight = nn.Parameter(torch.full((d,), 3.0))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def test_hand_written_rmsnorm_comes_out_as_its_weight():
    g = _graph(RMSNormByHand(), 7 * torch.randn(32, 16, 64))
    out = [op for op in g if op.kind is OpKind.SCALE][-1]
    assert _rel(g.signal(out).forward.second, 9.0) < JENSEN


def test_rsqrt_of_a_narrow_mean_of_squares_after_dropout_stays_finite():
    """Width 16 after dropout: the mean of squares is a wide Gamma whose grid, stretched to the exact
    variance, once put nodes below zero, and rsqrt of those made the prediction 1e20 (found by the fuzz)."""
    model = nn.Sequential(nn.Dropout(0.1), RMSNormByHand(16))
    x = torch.randn(4, 8, 16)
    g = _graph(model, x, stats=True)
    rsqrt = next(op for op in g if op.kind is OpKind.MATH and op.params.fn.name == "RSQRT")
    xs = []
    for seed in range(200):  # the dropout masks' expectation
        torch.manual_seed(seed)
        h = model[0](x)
        xs.append(torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6).pow(2).mean())
    assert _rel(g.signal(rsqrt).forward.second, torch.stack(xs).mean().item()) < 0.05


def test_spatial_mean_of_a_residual_sum_keeps_the_branch_channel_offsets():
    """(x + f(x)).mean((2, 3)) with the input first: the add is a conv feature map (channels at dim 1), so the
    spatial mean keeps the per-channel offsets f builds up (SiLU's positive mean through the 1x1 conv) instead
    of averaging them away as if channels were the last dim (predicted 0.095 against 0.38 before)."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 32, 1)
            nn.init.kaiming_uniform_(self.c1.weight, nonlinearity="relu")
            nn.init.xavier_normal_(self.c2.weight, gain=2.0)

        def forward(self, x):
            return (x + self.c2(torch.nn.functional.silu(self.c1(x)))).mean((2, 3))

    model, x = Block(), torch.randn(4, 32, 8, 8)
    g = _graph(model, x, stats=True)
    with torch.no_grad():
        measured = model(x).pow(2).mean().item()
    assert _rel(g.signal(_first(g, OpKind.REDUCE)).forward.second, measured) < 0.3  # 4 samples, 32 channels


@pytest.mark.parametrize("norm", ["instance", "instance_affine", "group_per_channel"])
def test_spatial_mean_after_instance_norm_is_exactly_the_bias(norm):
    """InstanceNorm removes each sample's channel mean over the spatial dims, so their average there is the
    affine bias exactly (zero without affine), not a 1/(h w) share of the variance (the fuzz: 28 of 1000)."""
    make = {"instance": lambda: nn.InstanceNorm2d(16), "instance_affine": lambda: nn.InstanceNorm2d(16, affine=True),
            "group_per_channel": lambda: nn.GroupNorm(16, 16)}[norm]
    n = make()
    if getattr(n, "bias", None) is not None:
        nn.init.normal_(n.bias, std=0.3)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), n)
    x = torch.randn(4, 3, 8, 8)
    target = from_instance(_SpatialMean(model), x)
    g = propagate(capture(target), target.inputs, model=target.model)
    with torch.no_grad():
        measured = model(x).mean((2, 3)).pow(2).mean().item()
    predicted = g.signal(_first(g, OpKind.REDUCE)).forward.second
    assert predicted == pytest.approx(measured, rel=1e-4, abs=1e-12)


def test_spatial_mean_after_group_norm_keeps_the_channel_offsets_the_group_mean_leaves():
    """GroupNorm removes each group's mean, not each channel's: with 4 channels a group, 3/4 of the channels'
    offsets (logsigmoid's negative mean through a conv) stay and a spatial mean sees them (the fuzz: predicted
    1/(h w) of the variance, 6x too low)."""
    body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.LogSigmoid(), nn.Conv2d(16, 16, 1), nn.GroupNorm(4, 16))
    x = torch.randn(8, 3, 8, 8)
    target = from_instance(_SpatialMean(body), x)
    g = propagate(capture(target), target.inputs, model=target.model)
    with torch.no_grad():
        measured = body(x).mean((2, 3)).pow(2).mean().item()
    assert _rel(g.signal(_first(g, OpKind.REDUCE)).forward.second, measured) < 0.5  # 16 channels' offsets


def test_batchnorm_of_channels_that_are_nearly_constant_sees_only_what_varies_within_them():
    """A conv after a sigmoid (inputs near 0.5 everywhere) makes each channel nearly a constant, and ReLU6 of
    it too: the offsets are most of the variance, the spread within a channel is below BatchNorm's eps. The
    slope at the centre (the linearized offsets) left BatchNorm a within-channel variance above eps, output 1.0
    predicted against 0.07 (the fuzz: 13 of 1000 models); integrating ReLU6 over each offset gets it."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.Sigmoid(),
                         nn.Conv2d(16, 16, 1, groups=2), nn.ReLU6(), nn.BatchNorm2d(16))
    for conv in (body[0], body[2]):
        nn.init.xavier_uniform_(conv.weight, gain=0.1)
    x = torch.randn(4, 16, 8, 8)
    g = _graph(body, x, stats=True)
    with torch.no_grad():
        measured = body(x).pow(2).mean().item()
    assert measured < 0.2  # the premise: BatchNorm mostly sees eps
    assert _rel(g.signal(_first(g, OpKind.NORM)).forward.second, measured) < 0.5


class _SpatialMean(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x).mean((2, 3))


def test_batchnorm_relu_conv_gradients_grow_by_pi_over_pi_minus_one():  # mean field of BatchNorm (Yang 2019)
    layers = [nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
              for _ in range(3)]
    g = _graph(nn.Sequential(*layers), torch.randn(4, 32, 64, 64))
    relus = g.of_kind(OpKind.ACTIVATION)
    ratio = g.signal(relus[0]).backward.second / g.signal(relus[1]).backward.second
    assert _rel(ratio, math.pi / (math.pi - 1)) < 0.1  # borders of a 64x64 map shift it slightly


# -- attention --------------------------------------------------------------------------------------------------


def test_xavier_projections_give_logit_variance_3_2():  # claim 9: q and k variance 2d/(d + d_k)
    q = nn.Linear(512, 64, bias=False)
    nn.init.xavier_normal_(q.weight)
    g = _graph(q, torch.randn(8, 512))
    q2 = g.signal(_first(g, OpKind.LINEAR)).forward.second  # k is drawn alike
    assert _rel(q2, 2 * 512 / 576) < CLAIM
    assert abs(logit_variance(q2, q2, 64) - 3.16) < 3.16 * 2 * CLAIM


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(512, 8, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def test_multihead_attention_packed_projection_gives_logits_near_a_quarter():  # claim 9
    g = _graph(MHA(), torch.randn(2, 16, 512))
    attn = _first(g, OpKind.ATTENTION)
    q, k = (g.signal(n).forward for n in attn.inputs[:2])
    assert abs(logit_variance(q.second, k.variance, attn.params.head_dim, attn.params.scale) - 0.25) < 0.25 * CLAIM


class Logits(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(512, 64, bias=False), nn.Linear(512, 64, bias=False)
        nn.init.xavier_normal_(self.q.weight)
        nn.init.xavier_normal_(self.k.weight)

    def forward(self, x):
        return self.q(x) @ self.k(x).transpose(-2, -1) / 8.0


def test_scaled_logits_written_out_predict_3_2():
    g = _graph(Logits(), torch.randn(4, 32, 512))
    out = [op for op in g if op.kind is OpKind.SCALE][-1]
    assert abs(g.signal(out).forward.second - 3.16) < 3.16 * 2 * CLAIM


# -- dropout ----------------------------------------------------------------------------------------------------


class HandDropout(nn.Module):
    def forward(self, x):
        return x * (torch.rand_like(x) > 0.3)


def test_inverted_dropout_multiplies_by_one_over_keep():
    g = _graph(nn.Dropout(0.5), torch.randn(64, 64), force="hooks")
    drop = _first(g, OpKind.DROPOUT)
    assert _rel(g.signal(drop).forward.second, 2 * g.signal(_first(g, OpKind.INPUT)).forward.second) < EXACT


def test_hand_written_dropout_multiplies_by_keep():  # claim 11
    g = _graph(HandDropout(), torch.randn(64, 64))
    out = _first(g, OpKind.MUL)
    assert _rel(g.signal(out).forward.second, 0.7 * g.signal(_first(g, OpKind.INPUT)).forward.second) < 1 / 400
    assert _rel(g.signal(_first(g, OpKind.INPUT)).backward.second, 0.7 * g.signal(out).backward.second) < 1 / 400


# -- pooling, reductions, recurrence, coverage -------------------------------------------------------------------------


def test_global_average_pool_keeps_per_channel_means_and_averages_the_rest():
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 16, 1), nn.AdaptiveAvgPool2d(1))
    g = _graph(model, torch.randn(8, 16, 8, 8) + 1.0)
    conv, pool = _first(g, OpKind.CONV), _first(g, OpKind.POOL)
    w = model[1].weight.detach()
    relu_mean = g.signal(_first(g, OpKind.ACTIVATION)).forward.mean
    per_channel = 16 * w.var().item() * relu_mean**2  # offsets the conv makes from the ReLU's mean
    assert g.signal(pool).forward.second > g.signal(conv).forward.second / 64 + 0.5 * per_channel


def test_rnn_tanh_without_recurrence_is_tanh_of_its_input():
    rnn = nn.RNN(32, 32, batch_first=True, bias=False)
    nn.init.normal_(rnn.weight_ih_l0, std=1 / math.sqrt(32))
    nn.init.zeros_(rnn.weight_hh_l0)
    g = _graph(rnn, torch.randn(8, 12, 32), force="hooks")
    out = g.signal(_first(g, OpKind.RECURRENT)).forward.second
    q = 32 * rnn.weight_ih_l0.detach().pow(2).mean().item() * g.signal(_first(g, OpKind.INPUT)).forward.second
    assert _rel(out, activation_gain(ActivationParams(Activation.TANH), Moments(q)).forward.second) < 1e-3


class Opaque(nn.Module):
    def forward(self, x):
        return torch.erf(x)  # no transfer function


def test_an_unknown_op_passes_its_input_on_and_is_listed():
    model = nn.Sequential(nn.Linear(16, 16), Opaque(), nn.ReLU())
    target = from_instance(model, torch.randn(8, 16))
    graph = capture(target)
    pred = predict(graph, target.inputs, model=model)
    unknown = [op.name for op in graph if op.kind is OpKind.UNKNOWN]
    assert unknown and set(unknown) <= set(pred.fallback)
    assert not set(unknown) & set(pred.covered(graph))
    lin = _first(graph, OpKind.LINEAR)
    assert _rel(pred.signals[unknown[0]].forward.second, pred.signals[lin.name].forward.second) < EXACT


def test_predictions_are_linear_in_depth():
    for depth in (4, 16):
        g = _graph(nn.Sequential(*[nn.Linear(32, 32) for _ in range(depth)]), torch.randn(4, 32))
        assert len(g.signals) == len(g)


# -- more measured claims ---------------------------------------------------------------------------------------


class Residual(nn.Module):
    """``x + f(x)`` (or ``(x + f(x)) / sqrt 2``, or Pre-LN ``x + f(LN(x))``) with variance-preserving ``f``."""

    def __init__(self, depth: int, mode: str, width: int = 256):
        super().__init__()
        self.fs = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        for f in self.fs:
            nn.init.normal_(f.weight, std=1 / math.sqrt(width))
        self.mode = mode

    def forward(self, x):
        for f, norm in zip(self.fs, self.norms):
            if self.mode == "pre-ln":
                x = x + f(norm(x))
            elif self.mode == "scaled":
                x = (x + f(x)) / math.sqrt(2)
            else:
                x = x + f(x)
        return x


@pytest.mark.parametrize("mode, expected", [("plain", 4096.0), ("scaled", 1.0), ("pre-ln", 13.0)])
def test_residual_streams_over_twelve_blocks(mode, expected):  # claim 5: 4096; 1; 1 + L
    g = _graph(Residual(12, mode), torch.randn(16, 256))
    out = g.signal(g.op("output").inputs[0]).forward.second
    assert _rel(out, expected) < 2 * CLAIM  # twelve realized weight matrices, each within about 1%


class CatConv(nn.Module):
    def __init__(self, c: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * c, c_out, 1, bias=False)
        nn.init.xavier_normal_(self.conv.weight)

    def forward(self, a, b):
        return self.conv(torch.cat([a, b], 1))


@pytest.mark.parametrize("c_out, expected", [(16, 1.6), (32, 4 / 3), (64, 1.0), (128, 2 / 3)])
def test_unet_concat_into_a_xavier_conv(c_out, expected):  # claim 7: 4c/(2c + c_out), not always 4/3
    g = _graph(CatConv(32, c_out), torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8))
    assert _rel(g.signal(_first(g, OpKind.CONV)).forward.second, expected) < SAMPLING


# -- the engine's fast paths give the numbers of the direct computations they replace, to rounding ------------

ROUNDING = 1e-12  # relative


@pytest.mark.parametrize("variance", [0.0, 1e-8, 0.3, 1.0, 4.0, 30.0, 1e3])
def test_recurrent_gates_from_one_tanh_equal_each_activation_on_the_grid(variance):
    from initlint.gains import gate_gains, tanh_gain

    sig, tanh = gate_gains(variance)
    for fast, fn in ((sig, Activation.SIGMOID), (tanh, Activation.TANH), (tanh_gain(variance), Activation.TANH)):
        ref = activation_gain(ActivationParams(fn), Moments(variance))
        for a, b in ((fast.forward.second, ref.forward.second), (fast.backward, ref.backward),
                     (fast.slope, ref.slope), (fast.forward.mean, ref.forward.mean)):
            assert a == pytest.approx(b, rel=ROUNDING, abs=1e-15)


def test_closed_form_slopes_equal_autograd_to_rounding():
    from initlint.gains import _ROUNDED_SLOPES, activation, gaussian, with_derivative

    x = torch.cat([gaussian(0.3, 2.0).nodes, gaussian(-1.0, 30.0).nodes, gaussian(0.0, 1e-6).nodes])
    for p in (ActivationParams(Activation.GELU), ActivationParams(Activation.GELU, approximate="tanh"),
              ActivationParams(Activation.SILU), ActivationParams(Activation.LEAKY_RELU, negative_slope=0.2),
              ActivationParams(Activation.PRELU), ActivationParams(Activation.RRELU)):
        y, d = with_derivative(activation(p), x)
        assert float((_ROUNDED_SLOPES[p.fn](p, x, y) - d).abs().max()) < 1e-13, p


def test_sorting_floats_by_their_bits_sorts_as_torch_does():
    from initlint.transfer import _sorted

    g = torch.Generator().manual_seed(0)
    for t in (torch.randn(5000, generator=g), torch.randn(700, generator=g, dtype=torch.float64) * 1e-300,
              torch.tensor([float("inf"), -float("inf"), 1.0, -1.0, 3.0]), torch.randint(-5, 5, (300,), generator=g),
              torch.randn(300, generator=g).half(), torch.tensor([0.0, -0.0, 1.0, -1.0]),
              torch.tensor([float("nan"), 1.0, -2.0])):
        a, b = t.sort().values, _sorted(t)
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()]), t.dtype


def test_compressed_gaussians_are_the_compressed_grid_node_for_node():
    from initlint.gains import compress, compressed_gaussian, gaussian, max_of

    for mean, variance in ((0.0, 1.0), (0.3, 2.5), (-1e-3, 1e-9), (0.0, 0.0), (2.0, 0.0)):
        g = gaussian(mean, variance)
        a, b = compress(g.nodes, g.weights, 48), compressed_gaussian(mean, variance, 48)
        assert torch.equal(a.nodes, b.nodes) and torch.equal(a.weights, b.weights)
    g = gaussian(0.0, 0.7)
    top = max_of(g, g.nodes, 4)
    a, b = compress(top.nodes, top.weights, 64), compressed_gaussian(0.0, 0.7, 64, 4)
    assert torch.equal(a.nodes, b.nodes) and torch.equal(a.weights, b.weights)


def test_interpolation_by_arithmetic_on_an_evenly_spaced_grid_equals_the_binary_search():
    from initlint.gains import gaussian, interpolate, matched

    g = torch.Generator().manual_seed(0)
    for rule in (gaussian(0.1, 2.0), gaussian(-3.0, 1e-2), matched(gaussian(0.5, 1.0), 0.6, 1.2)):
        assert rule.spaced
        for f in (torch.relu, torch.tanh, torch.square):
            values = f(rule.nodes)
            x = torch.cat([rule.nodes, (rule.nodes[:-1] + rule.nodes[1:]) / 2,
                           rule.nodes[0] + (rule.nodes[-1] - rule.nodes[0]) * (1.4 * torch.rand(500, generator=g,
                                                                                      dtype=torch.float64) - 0.2)])
            a, b = interpolate(x, rule.nodes, values), interpolate(x, rule.nodes, values, spaced=True)
            assert float((a - b).abs().max()) <= 1e-12 * float(values.abs().max())


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_statistics_equal_a_log_softmax_on_the_same_draws(causal):
    from initlint import softmax

    for n_q, n_k in ((1, 8), (16, 16)):
        z, d, mask = softmax._draws(n_q, n_k, causal)  # keys first: (n_k, reps, rows)
        for variance in (0.0, 0.09, 3.16, 400.0):
            logits = z * math.sqrt(variance)
            if mask is not None:
                logits = logits.masked_fill(mask, -math.inf)
            logp = torch.log_softmax(logits, dim=0)
            p = logp.exp()
            jac = (d - (p * d).sum(0, keepdim=True)) * p
            live = logp if mask is None else logp[~mask.expand(logp.shape)]
            st = softmax._stats.__wrapped__(n_q, n_k, variance, causal)
            assert st.p2 == pytest.approx(float((p * p).mean()), rel=ROUNDING)
            assert st.jacobian == pytest.approx(float((jac * jac).mean()), rel=ROUNDING)
            assert st.log_mean == pytest.approx(float(live.mean()), rel=ROUNDING)
            assert st.log_second == pytest.approx(float((live * live).mean()), rel=ROUNDING)


def test_empirical_quantiles_by_numpy_equal_torch_sorting_and_picking():
    from initlint.gains import DTYPE, NODES
    from initlint.transfer import _by_numpy, _sorted

    g = torch.Generator().manual_seed(0)
    for n in (1, 7, NODES, NODES + 1, 2 * NODES, 6144, 12345):
        for t in ((torch.randn(n, generator=g) * 50).to(dt) for dt in (torch.float32, torch.float64, torch.int64,
                                                                         torch.int32, torch.uint8)):
            ref = _sorted(t)
            if n > NODES:
                ref = ref[((torch.arange(NODES, dtype=DTYPE) + 0.5) * n / NODES).long()]
            got = _by_numpy(t)
            assert got is not None and got.dtype == DTYPE and torch.equal(got, ref.to(DTYPE)), (n, t.dtype)
    x = torch.randn(500, generator=g)
    x[3] = float("nan")
    assert torch.equal(_by_numpy(x).isnan(), _sorted(x)[((torch.arange(NODES) + 0.5) * 500 / NODES).long()].isnan())
    x[5] = -0.0  # zeros: their signs' places are torch's sort's to decide
    assert _by_numpy(x) is None


@pytest.mark.parametrize("fn, extra", [(Activation.RELU, {}), (Activation.RELU6, {}), (Activation.HARDTANH, {}),
                                       (Activation.HARDTANH, {"min_val": -2.0, "max_val": 0.5}),
                                       (Activation.LEAKY_RELU, {"negative_slope": 0.2}), (Activation.PRELU, {}),
                                       (Activation.RRELU, {}), (Activation.IDENTITY, {})])
def test_piecewise_linear_gains_equal_the_grid_to_rounding(fn, extra):
    import initlint.gains as G

    p = ActivationParams(fn, **extra)
    for mean in (0.0, 0.3, -1.0, 5.9, 6.0, -7.9, 12.0):
        for variance in (0.0, 1e-6, 0.5, 1.0, 4.0, 1e4):
            x = Moments(variance + mean * mean, mean)
            fast = G._piecewise_gain(p, x)
            t, w = G._standard()
            y, d = G.activation_with_derivative(p, mean + math.sqrt(variance) * t, rounded=True)
            e = torch.mv(torch.stack((y * y, y, d * d, d)), w).tolist()
            scale = x.second + 37.0  # the size of y^2 on the grid: rounding noise is relative to it
            assert fast.forward.second == pytest.approx(e[0], rel=1e-12, abs=1e-15 * scale)
            assert fast.forward.mean == pytest.approx(e[1], rel=1e-12, abs=1e-15 * math.sqrt(scale))
            assert (fast.backward, fast.slope) == pytest.approx((e[2], e[3]), rel=1e-12, abs=1e-15)
    assert G._piecewise_gain(p, Moments(float("nan"), 0.0)) is None
    assert G._piecewise_gain(ActivationParams(Activation.GELU), Moments(1.0)) is None


def _nodeless_and_full(graph, monkeypatch):
    import initlint.propagate as P

    fast = P.predict(graph).signals
    monkeypatch.setattr(P, "_MOMENTS_ONLY", frozenset())
    return fast, P.predict(graph).signals


def test_sources_no_consumer_reads_get_no_nodes_and_the_same_predictions(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.Flatten(), nn.Linear(8 * 36, 16), nn.Linear(16, 4), nn.Tanh())
    fast, full = _nodeless_and_full(capture(from_instance(model, torch.randn(2, 3, 8, 8))), monkeypatch)
    assert fast == full


def test_an_op_that_falls_back_on_a_source_without_nodes_gives_it_its_nodes(monkeypatch):
    from initlint.graph import ModelGraph
    from initlint.ops import Capture, LinearParams, Op, WeightStats

    w = WeightStats.of("a.weight", torch.randn(16, 16, generator=torch.Generator().manual_seed(0)) / 4, 16, 16)
    ops = [Op("x", OpKind.INPUT, "input", shape=(4, 16)),
           Op("a", OpKind.LINEAR, "nn.Linear", ("x",), params=LinearParams(16, 16, False), weight=w, shape=(4, 16)),
           Op("b", OpKind.LINEAR, "nn.Linear", ("a",), params=LinearParams(16, 16, False), shape=(4, 16)),  # no weight
           Op("c", OpKind.ACTIVATION, "nn.ReLU", ("b",), params=ActivationParams(Activation.RELU), shape=(4, 16)),
           Op("output", OpKind.OUTPUT, "output", ("c",))]
    graph = ModelGraph.build("m", Capture.FX, ops)
    fast, full = _nodeless_and_full(graph, monkeypatch)
    assert fast == full and fast["c"].forward.second > 0
