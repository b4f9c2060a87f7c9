"""IL202 unscaled-branch-sum: sums of N parallel branches of one input that are not scaled down."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity
from initlint.ops import OpKind

# The engine's factor against theory: independent zero-mean branches add exactly; ReLU-ending ones add their
# means coherently, 1 + (N - 1)/pi after 1/sqrt(N) (measured-claims, claim 6). 3% covers the borders of the
# zero-padded convs, which make the branches' variances differ by a few percent.
THEORY_TOL = 0.03
# A forward pass over 2 x 32 x 16 x 16 outputs: the measured ratio of the sum's second moment to the branches'
# mean has the sampling spread of 16384 correlated values per branch; 5%.
FORWARD_TOL = 0.05


class MultiPath(nn.Module):
    """``sum(path(x))`` over convs of kernel 1, 3, 5, 7..., optionally ReLU-ended, scaled, stacked or averaged."""

    def __init__(self, c=32, n=4, relu=False, scale=1.0, form="sum", gain=1.0, norm=None):
        super().__init__()
        self.paths = nn.ModuleList(nn.Conv2d(c, c, 2 * i + 1, padding=i) for i in range(n))
        for p in self.paths:
            nn.init.kaiming_normal_(p.weight, nonlinearity="relu" if relu else "linear")
            nn.init.zeros_(p.bias)
            with torch.no_grad():
                p.weight.mul_(gain)
        self.relu, self.scale, self.form = relu, scale, form
        self.norm = nn.BatchNorm2d(c) if norm == "bn" else (nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))
                                                           if norm == "conv_bn" else None)

    def branches(self, x):
        return [torch.relu(p(x)) if self.relu else p(x) for p in self.paths]

    def forward(self, x):
        outs = self.branches(x)
        if self.form == "stack":
            y = torch.stack(outs).sum(0)
        elif self.form == "mean":
            y = torch.stack(outs).mean(0)
        else:
            y = sum(outs)
        y = y * self.scale if self.scale != 1.0 else y
        return self.norm(y) if self.norm is not None else y


def model_of(blocks=1, **kw):
    torch.manual_seed(0)
    return nn.Sequential(*[MultiPath(**kw) for _ in range(blocks)], nn.Conv2d(32, 10, 1)), torch.randn(2, 32, 16, 16)


def findings(model, x):
    report = lint(model, x, select=["IL202"])
    assert report.targets[0].error is None, report.targets[0].error
    return report.findings


def forward_factor(block, x):
    """The sum's second moment over the branches' mean, from a forward pass."""
    with torch.no_grad():
        outs = block.branches(x)
        y = block(x) if block.norm is None else sum(outs) * block.scale
    return y.square().mean().item() / (sum(o.square().mean().item() for o in outs) / len(outs))


def test_four_zero_mean_paths_add_four_times_the_variance():
    model, x = model_of(blocks=2)
    (f1,) = findings(model, x)  # both blocks run the same line of MultiPath.forward: one finding, at the first
    assert f1.module == "0" and f1.severity is Severity.WARNING
    p = f1.predicted
    assert p["repeats"] == 2
    assert p["branches"] == 4
    assert p["factor"] == pytest.approx(4.0, rel=THEORY_TOL)
    assert p["factor"] == pytest.approx(forward_factor(model[0], x), rel=FORWARD_TOL)
    assert f1.message == (
        f"`0` sums 4 parallel branches of the model's input unscaled: variance x{p['factor']:#.2g} the branches' "
        f"average, x{p['gain']:#.3g} from the input (this line runs 2 times: also in `1`)"
    )
    assert f1.fix.summary == f"Multiply the sum of the branches by {p['sum_scale']:.3g}"
    assert f1.fix.code.startswith(f"out = (f1(x) + f2(x) + f3(x) + f4(x)) * {p['sum_scale']:.3g}")
    assert p["sum_scale"] == pytest.approx(0.5, rel=THEORY_TOL)


def test_relu_ended_paths_add_their_means_and_the_fix_divides_by_the_predicted_factor():
    model, x = model_of(relu=True)
    (f,) = findings(model, x)
    n = 4
    assert f.predicted["factor"] == pytest.approx(n * (1 + (n - 1) / math.pi), rel=THEORY_TOL)
    assert f.predicted["factor"] == pytest.approx(forward_factor(model[0], x), rel=FORWARD_TOL)
    assert "(x4 for zero-mean branches; their positive means add up)" in f.message
    assert f.fix.summary.endswith(f"(1/sqrt(4) would leave x{f.predicted['factor_per_branch']:#.2g})")
    fixed, x = model_of(relu=True, scale=round(f.predicted["sum_scale"], 4))
    assert findings(fixed, x) == []


@pytest.mark.parametrize("n", [2, 4, 8])
def test_claim_6_one_over_sqrt_n_leaves_relu_ended_paths_at_1_plus_n_minus_1_over_pi(n):
    model, x = model_of(n=n, relu=True, scale=n**-0.5)
    left = 1 + (n - 1) / math.pi  # 1.32, 1.95, 3.23; measured 1.33, 1.95, 3.22 in measured-claims
    assert forward_factor(model[0], x) == pytest.approx(left, rel=FORWARD_TOL)
    got = findings(model, x)
    if left < 1.5:  # N = 2: under the threshold
        assert got == []
    else:
        (f,) = got
        assert f.predicted["factor"] == pytest.approx(left, rel=THEORY_TOL)
        assert f.message.startswith(f"`0` sums {n} parallel branches of the model's input scaled by {n ** -0.5:.3g}: "
                                    f"variance still x{f.predicted['factor']:#.2g} the branches' average")


def test_stacked_sums_are_found_and_averages_and_scaled_sums_are_clean():
    (f,) = findings(*model_of(form="stack"))
    assert f.predicted["factor"] == pytest.approx(4.0, rel=THEORY_TOL)
    assert findings(*model_of(form="mean")) == []
    assert findings(*model_of(scale=0.5)) == []


def test_near_miss_stacked_experts_scaled_by_one_over_sqrt_n_on_a_small_batch():
    """Each stacked branch has its own per-feature offsets over a 16-row batch: the sum over the stack adds
    them as independent (x8 / 8 = 1 after the scale), not as offsets shared along the summed dimension."""

    class Experts(nn.Module):
        def __init__(self, n=8, d=64):
            super().__init__()
            self.experts = nn.ModuleList(nn.Linear(d, d) for _ in range(n))
            for e in self.experts:
                nn.init.kaiming_normal_(e.weight, nonlinearity="linear")
                nn.init.zeros_(e.bias)
            self.head = nn.Linear(d, 1)

        def forward(self, x):
            y = torch.stack([e(x) for e in self.experts]).sum(0) / math.sqrt(len(self.experts))
            return self.head(torch.tanh(y))

    torch.manual_seed(0)
    model, x = Experts(), torch.randn(16, 64)
    report = lint(model, x, select=["IL202"], signals=True)
    assert report.findings == []
    with torch.no_grad():
        y = torch.stack([e(x) for e in model.experts]).sum(0) / math.sqrt(8)
    graph = report.targets[0].graph
    scaled = next(op for op in graph if op.kind is OpKind.SCALE)
    assert graph.signal(scaled).forward.second == pytest.approx(y.pow(2).mean().item(), rel=0.15)


def test_a_norm_after_the_sum_makes_it_info():
    for norm in ("bn", "conv_bn"):
        (f,) = findings(*model_of(norm=norm))
        assert f.severity is Severity.INFO, norm
        assert f.message.endswith("normalizes it")


def test_near_miss_paths_that_each_halve_the_signal():
    # two paths of gain 1/2 each: the sum is x2 its branches but x1 its input, which stays where it was
    model, x = model_of(n=2, gain=0.5**0.5)
    assert findings(model, x) == []
    model, x = model_of(n=2)
    (f,) = findings(model, x)
    assert f.predicted["factor"] == pytest.approx(2.0, rel=THEORY_TOL)


def test_residuals_embedding_sums_and_normalized_branches_are_not_branch_sums():
    class Mixed(nn.Module):
        def __init__(self, d=32):
            super().__init__()
            self.tok, self.pos = nn.Embedding(100, d), nn.Embedding(16, d)
            self.fc, self.proj, self.deep = nn.Linear(d, d), nn.Linear(d, d), nn.Sequential(nn.Linear(d, d), nn.ReLU(),
                                                                                            nn.Linear(d, d))
            self.a = nn.Sequential(nn.Conv1d(16, 16, 1), nn.BatchNorm1d(16))
            self.b = nn.Sequential(nn.Conv1d(16, 16, 3, padding=1), nn.BatchNorm1d(16))

        def forward(self, ids):
            x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))  # two lookups: unrelated tensors
            x = x + self.fc(x)  # residual: IL201's
            x = self.proj(x) + self.deep(x)  # projection shortcut: IL201's
            return self.a(x) + self.b(x)  # branches ending in BatchNorm: the norms set the sum's scale

    torch.manual_seed(0)
    assert findings(Mixed(), torch.randint(0, 100, (4, 16))) == []


def test_inception_block_whose_first_two_branches_look_like_a_projection_shortcut_counts_three_branches():
    """b1(x) + b2(x) + b3(x) with b1 a 1x1 conv and b2 conv-relu-conv: (b1 + b2) alone reads as ResNet's
    projection block, but the third branch of the same x makes the whole a sum of three."""
    from benchmarks.cases.streams import Inception  # the benchmark's IL202/inception-explicit block

    torch.manual_seed(0)
    model, x = nn.Sequential(Inception(scaled=False), nn.Conv2d(24, 4, 1)), torch.randn(2, 24, 8, 8)
    (f,) = findings(model, x)
    assert f.predicted["branches"] == 3
    assert f.predicted["factor"] == pytest.approx(3.0, rel=THEORY_TOL)
    with torch.no_grad():
        block = model[0]
        outs = [block.b1(x), block.b2(x), block.b3(x)]
        measured = sum(outs).square().mean() / (sum(o.square().mean() for o in outs) / 3)
    assert f.predicted["factor"] == pytest.approx(measured.item(), rel=FORWARD_TOL)
