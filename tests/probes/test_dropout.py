"""IL206's probe on masks with few independent draws: a bernoulli_ mask and hand-written drop-path (one keep per
sample), where one pass is too few draws to judge and the probe pools more passes."""

from __future__ import annotations

import torch
from torch import nn

from .stage import NOT_REPRODUCED, confirmed_and_fixed, forced, probed


class DropPath(nn.Module):
    """Stochastic depth by hand on a residual branch: one keep-draw per sample."""

    def __init__(self, inverted: bool, keep: float = 0.8, d: int = 32):
        super().__init__()
        self.fc, self.inverted, self.keep = nn.Linear(d, d), inverted, keep

    def forward(self, x):
        branch = self.fc(x)
        if self.training:
            mask = (torch.rand(x.shape[0], 1, 1, device=x.device) < self.keep).to(x.dtype)
            branch = branch * mask / self.keep if self.inverted else branch * mask
        return x + branch


class Bernoulli(nn.Module):
    def __init__(self, inverted: bool, keep: float = 0.7):
        super().__init__()
        self.fc1, self.fc2, self.inverted, self.keep = nn.Linear(32, 64), nn.Linear(64, 10), inverted, keep

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if self.training:
            mask = torch.empty_like(h).bernoulli_(self.keep)
            h = h * mask / self.keep if self.inverted else h * mask
        return self.fc2(h)


def drop_path(inverted: bool):
    torch.manual_seed(0)
    return nn.Sequential(*[DropPath(inverted) for _ in range(3)])


def test_drop_path_pools_passes_confirmed_and_fixed():
    from tests.test_state import assert_same, snapshot

    model, x = drop_path(inverted=False), torch.randn(8, 6, 32)
    torch.manual_seed(0)  # the state `probed` seeds before linting
    before = snapshot(model)
    found = probed(model, x, "IL206")
    assert_same(before, snapshot(model))  # the extra passes restore the RNG and modes too
    (f,) = found  # one line of the block's forward, run by its 3 blocks: one finding
    assert f.predicted["repeats"] == 3
    for f in found:
        confirmed_and_fixed(f)
        m = f.probe.measured
        # 8 samples a pass: one keep each, pooled over passes up to 256 draws; 0.8 within 3 standard errors
        assert m["mask_draws"] >= 200 and m["passes"] > 1, m
        assert abs(m["train_mean_factor"] - 0.8) < 3 * m["standard_error"], m
        assert abs(f.probe.after_fix["train_mean_factor"] - 1.0) < 3 * f.probe.after_fix["standard_error"]


def test_drop_path_forced_on_inverted_not_reproduced():
    model, x = drop_path(inverted=True), torch.randn(8, 6, 32)
    f = forced(model, x, "IL206", _first_mul(model, x), {"train_mean_factor": 0.8})
    assert f.probe.status is NOT_REPRODUCED, (dict(f.probe.measured), f.probe.detail)
    assert f.probe.measured["mask_draws"] >= 200


def test_bernoulli_mask_confirmed_and_fixed():
    torch.manual_seed(0)
    (f,) = probed(Bernoulli(inverted=False), torch.randn(8, 32), "IL206")
    confirmed_and_fixed(f)
    assert abs(f.probe.measured["train_mean_factor"] - 0.7) < 3 * f.probe.measured["standard_error"]


def test_bernoulli_forced_on_inverted_not_reproduced():
    torch.manual_seed(0)
    model, x = Bernoulli(inverted=True), torch.randn(8, 32)
    f = forced(model, x, "IL206", _first_mul(model, x), {"train_mean_factor": 0.7})
    assert f.probe.status is NOT_REPRODUCED, (dict(f.probe.measured), f.probe.detail)


def _first_mul(model, x) -> str:
    from initlint.capture import capture
    from initlint.load import from_instance

    graph = capture(from_instance(model, x))
    return next(op.name for op in graph if op.kind.value == "mul")
