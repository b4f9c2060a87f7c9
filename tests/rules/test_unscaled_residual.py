"""IL201 unscaled-residual: chains of residual adds whose unscaled branches grow the stream geometrically."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity

# Weight sample variance: 65536 weights per layer estimate E[W^2] within 4 standard errors of sqrt(2/n) = 0.55%;
# two layers and the default biases (variance 1/(3*256) = 0.13% of the input's) per add: 3% covers the factor.
PER_ADD_TOL = 0.03
# A forward pass against the prediction over 4 adds of width 512: each add's measured gain is off its
# expectation by a few percent at this width (the product of 10 adds spread -17% to +23% over 5 seeds at width
# 512, see the rule's docs); 15% over 4 adds.
FORWARD_TOL = 0.15


class Block(nn.Module):
    """``x + fc2(relu(fc1(x)))``, with the branch initialized for a gain ``gain`` (1: Kaiming on both)."""

    def __init__(self, d, init="kaiming", out=None):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        self.init, self.out = init, out
        if init == "kaiming":
            nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
            nn.init.kaiming_normal_(self.fc2.weight, nonlinearity="linear")
        elif init == "xavier":  # Linear-ReLU-Linear with Xavier on both: gain 1/2
            nn.init.xavier_normal_(self.fc1.weight)
            nn.init.xavier_normal_(self.fc2.weight)
        elif init == "skipinit":
            nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)
        if out == "rezero":
            self.alpha = nn.Parameter(torch.zeros(()))
        elif out == "layerscale":
            self.gamma = nn.Parameter(torch.full((d,), 1e-4))

    def forward(self, x):
        f = self.fc2(torch.relu(self.fc1(x)))
        if self.out == "rezero":
            return x + self.alpha * f
        if self.out == "layerscale":
            return x + self.gamma * f
        if isinstance(self.out, float):  # the scaled sum the fix proposes
            return (x + f) * self.out
        return x + f


def stack(blocks=10, d=256, final_norm=False, **kw):
    torch.manual_seed(0)
    layers = [Block(d, **kw) for _ in range(blocks)] + ([nn.LayerNorm(d)] if final_norm else [])
    return nn.Sequential(*layers), torch.randn(64, d)


def findings(model, x):
    report = lint(model, x, select=["IL201"])
    assert report.targets[0].error is None, report.targets[0].error
    return report.findings


def test_ten_kaiming_blocks_double_the_stream_at_every_add():
    model, x = stack()
    (f,) = findings(model, x)
    p = f.predicted
    assert f.severity is Severity.ERROR  # growth >= 100
    assert f.module == "0" and p["adds"] == 10
    assert p["growth_per_add"] == pytest.approx(2.0, rel=PER_ADD_TOL)
    assert p["growth"] == pytest.approx(p["growth_per_add"] ** 10)
    assert p["branch_skip_variance_ratio"] == pytest.approx(1.0, rel=PER_ADD_TOL)
    assert f.message == (
        "`0` to `9`: 10 residual adds with unscaled branches (branch/skip variance 1.0): residual-stream "
        f"variance x2.0 per add, x{p['growth']:.0f} over 10 adds"
    )
    assert f.fix.code.startswith(
        "# SkipInit: the last layer of each branch starts at zero\n"
        "for i in range(10):\n"
        '    for name in (f"{i}.fc2.weight", f"{i}.fc2.bias"):\n'
        "        nn.init.zeros_(model.get_parameter(name))\n"
    )
    assert "x = (x + branch(x)) * 0.707" in f.fix.code


def test_the_growth_printed_is_what_a_forward_pass_gives():
    model, _ = stack(blocks=4, d=512)
    x = torch.randn(1024, 512)
    (f,) = findings(model, x)
    assert f.severity is Severity.WARNING  # 2^4 = 16: between 4 and 100
    with torch.no_grad():
        measured = model(x).square().mean().item() / x.square().mean().item()
    assert measured == pytest.approx(f.predicted["growth"], rel=FORWARD_TOL)


def test_xavier_on_both_layers_grows_as_one_and_a_half_per_add():
    model, x = stack(init="xavier")
    (f,) = findings(model, x)
    assert f.severity is Severity.WARNING
    assert f.predicted["growth_per_add"] == pytest.approx(1.5, rel=PER_ADD_TOL)  # measured-claims, claim 5
    assert f.predicted["sum_scale"] == pytest.approx(1.5 ** -0.5, rel=PER_ADD_TOL)


def test_both_fixes_silence_the_rule():
    model, x = stack()
    (f,) = findings(model, x)
    exec(f.fix.code.split("# or keep")[0], {"nn": nn, "model": model})
    assert findings(model, x) == []
    scaled, x = stack(out=round(f.predicted["sum_scale"], 3))
    assert findings(scaled, x) == []


def test_a_final_norm_makes_it_info():
    model, x = stack(final_norm=True)
    (f,) = findings(model, x)
    assert f.severity is Severity.INFO
    assert f.message.endswith("over 10 adds, then `10` normalizes it")


@pytest.mark.parametrize("kw", [dict(init="skipinit"), dict(out="rezero"), dict(out="layerscale")],
                         ids=["skipinit", "rezero", "layerscale"])
def test_zero_initialized_and_scaled_branches_are_clean(kw):
    assert findings(*stack(**kw)) == []


def test_pre_ln_and_batchnorm_in_branch_grow_linearly_and_are_clean():
    class PreLN(nn.Module):
        def __init__(self, d=64):
            super().__init__()
            self.ln, self.block = nn.LayerNorm(d), Block(d)

        def forward(self, x):
            return x + self.block.fc2(torch.relu(self.block.fc1(self.ln(x))))

    class BNBranch(nn.Module):
        def __init__(self, c=16):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
            nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")

        def forward(self, x):
            return torch.relu(x + self.bn(self.conv(x)))

    torch.manual_seed(0)
    assert findings(nn.Sequential(*[PreLN() for _ in range(10)]), torch.randn(8, 64)) == []
    assert findings(nn.Sequential(*[BNBranch() for _ in range(10)]), torch.randn(2, 16, 8, 8)) == []


def test_near_misses_three_xavier_adds_and_a_fixup_like_scaling():
    # 1.5^3 = 3.4 stays under 4; 1.5^4 = 5.1 does not
    assert findings(*stack(blocks=3, init="xavier")) == []
    (f,) = findings(*stack(blocks=4, init="xavier"))
    assert f.predicted["growth"] == pytest.approx(1.5**4, rel=4 * PER_ADD_TOL)
    # branch variance 1/L per add (Fixup/DeepNet-like): (1 + 1/L)^L stays under e
    model, x = stack(blocks=12)
    with torch.no_grad():
        for block in model:
            block.fc2.weight.mul_(12 ** -0.5)
            block.fc2.bias.zero_()
        growth = model(x).square().mean().item() / x.square().mean().item()
    assert growth < math.e
    assert findings(model, x) == []


def test_an_elementwise_polynomial_is_not_a_residual_block():
    class TanhGelu(nn.Module):  # as GPT-2 writes it: x + 0.044715 x^3 inside, no weight layer in the "branch"
        def forward(self, x):
            x = x * 10
            return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3))))

    assert findings(nn.Sequential(*[TanhGelu() for _ in range(4)]), torch.randn(8, 16)) == []


# -- parallel blocks: x + attn(x) + mlp(x) (GPT-J, PaLM) ------------------------------------------------------


class Parallel(nn.Module):
    """Two branches of the same ``x`` added to it, each variance-preserving: the stream triples per block."""

    def __init__(self, d, norm=False, alpha=None):
        super().__init__()
        self.a, self.m1, self.m2 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        nn.init.kaiming_normal_(self.a.weight, nonlinearity="linear")
        nn.init.kaiming_normal_(self.m1.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(self.m2.weight, nonlinearity="linear")
        self.norm = nn.LayerNorm(d) if norm else None
        self.alpha = alpha

    def forward(self, x):
        h = self.norm(x) if self.norm is not None else x
        a, m = self.a(h), self.m2(torch.relu(self.m1(h)))
        if self.alpha is not None:
            return x + self.alpha * a + self.alpha * m
        return x + a + m


def parallel_stack(blocks=4, d=256, **kw):
    torch.manual_seed(0)
    return nn.Sequential(*[Parallel(d, **kw) for _ in range(blocks)]), torch.randn(64, d)


def test_parallel_blocks_count_both_branches():
    model, x = parallel_stack()
    (f,) = [f for f in lint(model, x, select=["IL201"]).findings]
    assert f.predicted["adds"] == 8  # two per block, one chain
    with torch.no_grad():
        measured = (model(x).pow(2).mean() / x.pow(2).mean()).item()
    assert measured > 40.0  # 3^4 = 81 with both branches as strong as the stream
    assert f.predicted["growth"] == pytest.approx(measured, rel=0.35)
    assert "for i in range(4):" in f.fix.code and "{i}.a.weight" in f.fix.code and "{i}.m2.weight" in f.fix.code


def test_parallel_blocks_prenormalized_or_scaled_are_not_findings():
    for kw in ({"norm": True}, {"alpha": 0.1}):  # GPT-J's x + attn(ln(x)) + mlp(ln(x)); small branch scales
        model, x = parallel_stack(**kw)
        assert lint(model, x, select=["IL201"]).findings == [], kw


def test_inception_sum_with_a_projection_is_not_a_parallel_block():
    """proj(x) + f(x) + g(x) is a sum of three branches (IL202's), not a residual stream extended."""

    class Inception(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.b1, self.b2, self.b3 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

        def forward(self, x):
            return self.b1(x) + self.b2(x) + self.b3(x)

    torch.manual_seed(0)
    model = nn.Sequential(*[Inception(64) for _ in range(4)])
    assert lint(model, torch.randn(32, 64), select=["IL201"]).findings == []
