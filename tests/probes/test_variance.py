"""Probes read from the shared pass: IL101, IL201, IL202, IL203, IL206, IL303."""

from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from .stage import CONFIRMED, NOT_REPRODUCED, confirmed_and_fixed, forced, one, probed

# A second moment measured at the probe's batch (32 x 256 values and more) is within 10% of the engine's
# prediction for these Gaussian layers (measured here: 0.1% to 4%); growth over a chain of 6 random adds, with
# the spread of a product of 6 random gains at width 128, within 30% (IL201's docs: 813 measured for 1014).
MOMENT_TOLERANCE = 0.10
CHAIN_TOLERANCE = 0.30


def rule_module(name: str):
    return importlib.import_module(f"initlint.rules.{name}")


def mlp(widths=(256, 256, 256, 10), first_std=None, kaiming=False, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    if kaiming:
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
    if first_std is not None:
        nn.init.normal_(model[0].weight, std=first_std)
    return model


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# -- IL101 -------------------------------------------------------------------------------------------------


def test_off_scale_weights_confirmed_and_fixed():
    f = one(mlp(first_std=1.0), torch.randn(32, 256), "IL101")
    confirmed_and_fixed(f)
    m, p = f.probe.measured, f.predicted
    assert relative(m["forward_gain"], p["forward_gain"]) < MOMENT_TOLERANCE, (m, p)
    assert relative(m["factor"], p["factor"]) < MOMENT_TOLERANCE
    assert f.probe.after_fix["factor"] < 1.0 + MOMENT_TOLERANCE, f.probe.after_fix


def test_off_scale_weights_forced_on_healthy_layers_not_reproduced(monkeypatch):
    monkeypatch.setattr(rule_module("off_scale_weights"), "FACTOR", 2.5)  # PyTorch's default init is 3x below
    found = probed(mlp(first_std=math.sqrt(2 / 256)), torch.randn(32, 256), "IL101")
    assert found, "the lowered threshold must make IL101 report the default-initialized layers"
    for f in found:
        assert f.probe.status is NOT_REPRODUCED, (f.op, dict(f.probe.measured))
        assert f.probe.measured["factor"] < 4.0


# -- IL201 -------------------------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, d, skip_init=False):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(self.fc2.weight, nonlinearity="linear")
        if skip_init:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


def residual_stack(skip_init=False, depth=6, d=128):
    torch.manual_seed(0)
    return nn.Sequential(*[Block(d, skip_init) for _ in range(depth)])


def test_unscaled_residual_confirmed_and_fixed():
    f = one(residual_stack(), torch.randn(32, 128), "IL201")
    confirmed_and_fixed(f)
    assert relative(f.probe.measured["growth"], f.predicted["growth"]) < CHAIN_TOLERANCE
    assert abs(f.probe.after_fix["growth"] - 1.0) < MOMENT_TOLERANCE  # SkipInit: every block the identity


def test_unscaled_residual_forced_on_skip_init_not_reproduced(monkeypatch):
    monkeypatch.setattr(rule_module("unscaled_residual"), "WARN_GROWTH", 0.5)
    f = one(residual_stack(skip_init=True), torch.randn(32, 128), "IL201")
    assert f.probe.status is NOT_REPRODUCED and abs(f.probe.measured["growth"] - 1.0) < MOMENT_TOLERANCE


# -- IL202 -------------------------------------------------------------------------------------------------


class MultiPath(nn.Module):
    def __init__(self, c=16, scaled=False):
        super().__init__()
        self.paths = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2) for k in (1, 3, 5, 7))
        for p in self.paths:
            nn.init.kaiming_normal_(p.weight, nonlinearity="linear")
        self.scaled = scaled

    def forward(self, x):
        out = sum(p(x) for p in self.paths)
        return out / math.sqrt(len(self.paths)) if self.scaled else out


def multipath(scaled=False):
    torch.manual_seed(0)
    return nn.Sequential(MultiPath(scaled=scaled), nn.Conv2d(16, 4, 1))


def test_unscaled_branch_sum_confirmed_and_fixed():
    f = one(multipath(), torch.randn(4, 16, 12, 12), "IL202")
    confirmed_and_fixed(f)
    assert relative(f.probe.measured["factor"], f.predicted["factor"]) < MOMENT_TOLERANCE
    assert abs(f.probe.after_fix["factor"] - 1.0) < MOMENT_TOLERANCE  # the inserted 1/sqrt(factor)


def test_unscaled_branch_sum_forced_on_scaled_sum_not_reproduced(monkeypatch):
    monkeypatch.setattr(rule_module("unscaled_branch_sum"), "MIN_FACTOR", 0.5)
    f = one(multipath(scaled=True), torch.randn(4, 16, 12, 12), "IL202")
    assert f.probe.status is NOT_REPRODUCED, dict(f.probe.measured)


# -- IL203 -------------------------------------------------------------------------------------------------


class Recommender(nn.Module):
    def __init__(self, small=True):
        super().__init__()
        self.item = nn.Embedding(1000, 32)
        if small:
            nn.init.normal_(self.item.weight, std=0.02)
        self.mlp = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, ids, features):
        return self.mlp(torch.cat([self.item(ids), features], dim=-1))


def recommender_inputs():
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 1000, (64,), generator=gen), torch.randn(64, 16, generator=gen)


def test_concat_scale_mismatch_confirmed_and_fixed():
    torch.manual_seed(0)
    f = one(Recommender(), recommender_inputs(), "IL203")
    confirmed_and_fixed(f)
    assert relative(f.probe.measured["second_moment_ratio"], f.predicted["second_moment_ratio"]) < 0.25
    assert f.probe.after_fix["second_moment_ratio"] < 2.0  # the embedding scaled up to the features' std


def test_concat_scale_mismatch_forced_on_matched_scales_not_reproduced(monkeypatch):
    monkeypatch.setattr(rule_module("concat_scale_mismatch"), "MIN_RATIO", 1.0)
    torch.manual_seed(0)
    found = [f for f in probed(Recommender(small=False), recommender_inputs(), "IL203")
             if "second_moment_ratio" in f.predicted]
    assert found and all(f.probe.status is NOT_REPRODUCED for f in found)


class RawUnits(nn.Module):
    """Two model inputs concatenated as they come: one standardized, one in raw millimetres."""

    def __init__(self, normalize=False):
        super().__init__()
        self.conv, self.normalize = nn.Conv2d(4, 8, 3, padding=1), normalize

    def forward(self, rgb, depth_mm):
        depth = (depth_mm - 1500.0) / 500.0 if self.normalize else depth_mm
        return self.conv(torch.cat((rgb, depth), dim=1))


def raw_inputs():
    torch.manual_seed(1)
    return torch.randn(2, 3, 16, 16), 1500.0 + 500.0 * torch.randn(2, 1, 16, 16)


def test_concat_of_raw_model_inputs_confirmed_and_fixed():
    # the fix scales a model input: read from the concat's own slices, after the inserted scale
    torch.manual_seed(0)
    f = one(RawUnits(), raw_inputs(), "IL203")
    confirmed_and_fixed(f)
    assert relative(f.probe.measured["second_moment_ratio"], f.predicted["second_moment_ratio"]) < 0.01
    assert f.probe.after_fix["second_moment_ratio"] < 1.1


def test_concat_of_raw_model_inputs_forced_on_normalized_not_reproduced(monkeypatch):
    monkeypatch.setattr(rule_module("concat_scale_mismatch"), "MIN_RATIO", 1.0)
    torch.manual_seed(0)
    found = [f for f in probed(RawUnits(normalize=True), raw_inputs(), "IL203") if "second_moment_ratio" in f.predicted]
    assert found and all(f.probe.status is NOT_REPRODUCED for f in found), [dict(f.probe.measured) for f in found]


class Merge(nn.Module):
    """Two inputs of widths 16 and 48 concatenated into a layer initialized for the first one's width."""

    def __init__(self, fan_in_used=16):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(32, 16), nn.Linear(32, 48), nn.Linear(64, 64)
        nn.init.normal_(self.out.weight, std=1 / math.sqrt(fan_in_used))

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], dim=-1))


def test_concat_width_confirmed_and_fixed():
    torch.manual_seed(0)
    found = [f for f in probed(Merge(), torch.randn(64, 32), "IL203") if "forward_gain_factor" in f.predicted]
    assert len(found) == 1
    confirmed_and_fixed(found[0])
    assert relative(found[0].probe.measured["forward_gain_factor"], 4.0) < MOMENT_TOLERANCE


def test_concat_width_forced_on_right_init_not_reproduced():
    torch.manual_seed(0)
    f = forced(Merge(fan_in_used=64), torch.randn(64, 32), "IL203", "out",
               {"forward_gain_factor": 4.0, "intended_variance": 1 / 64})
    assert f.probe.status is NOT_REPRODUCED and relative(f.probe.measured["forward_gain_factor"], 1.0) < 0.15


# -- IL206 -------------------------------------------------------------------------------------------------


class Dropped(nn.Module):
    def __init__(self, inverted=False):
        super().__init__()
        self.fc1, self.fc2, self.inverted = nn.Linear(32, 64), nn.Linear(64, 10), inverted

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if self.training:
            h = h * (torch.rand_like(h) > 0.5).float() / (0.5 if self.inverted else 1.0)
        return self.fc2(h)


def test_non_inverted_dropout_confirmed_and_fixed():
    torch.manual_seed(0)
    f = one(Dropped(), torch.randn(32, 32), "IL206")
    confirmed_and_fixed(f)
    m = f.probe.measured
    # one mask draw: the factor is within 3 of its standard errors of the keep probability
    assert abs(m["train_mean_factor"] - 0.5) < 3 * m["standard_error"], m
    assert abs(f.probe.after_fix["train_mean_factor"] - 1.0) < 3 * f.probe.after_fix["standard_error"]


def test_non_inverted_dropout_forced_on_inverted_not_reproduced(monkeypatch):
    monkeypatch.setattr(rule_module("non_inverted_dropout"), "TOLERANCE", -1.0)
    torch.manual_seed(0)
    f = one(Dropped(inverted=True), torch.randn(32, 32), "IL206")
    assert f.probe.status is NOT_REPRODUCED, dict(f.probe.measured)


# -- IL303 -------------------------------------------------------------------------------------------------


def test_signal_drift_confirmed_and_fixed():
    f = one(mlp((256,) * 7 + (10,)), torch.randn(32, 256), "IL303")
    confirmed_and_fixed(f)
    m = f.probe.measured
    assert m["forward_factor"] < 1e-2 and m["backward_factor"] < 1e-2, m  # default init: 1/6 per layer
    assert 0.5 < f.probe.after_fix["forward_factor"] < 4.0  # Kaiming: about 1 per layer


def test_signal_drift_forced_on_a_mild_drift_not_reproduced(monkeypatch):
    # Xavier with a ReLU after each layer halves the second moment per layer: 1/16 over 4 layers, under the
    # probe's 100x but over a threshold lowered to 4x
    monkeypatch.setattr(rule_module("signal_drift"), "FACTOR", 4.0)
    model = mlp((256,) * 5 + (10,))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
    found = probed(model, torch.randn(32, 256), "IL303")
    assert found, "the lowered threshold must make IL303 report the Xavier-ReLU MLP"
    assert all(f.probe.status is NOT_REPRODUCED for f in found), [dict(f.probe.measured) for f in found]


def test_probe_reads_the_numbers_its_message_prints():
    f = one(mlp(first_std=1.0), torch.randn(32, 256), "IL101")
    shared = set(f.probe.measured) & set(f.predicted)
    assert {"forward_gain", "factor"} <= shared
    assert f.probe.status is CONFIRMED
