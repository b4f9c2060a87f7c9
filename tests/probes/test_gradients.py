"""Gradient probes: IL204 (last-layer gradient as arranged against the same blocks Pre-LN) and IL105 (gradient
ratio between the first and last steps of a recurrence); IL107's clones ride along on the transformer."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.probes.gradients import PRE_LN_GAP

from .stage import NOT_REPRODUCED, confirmed_and_fixed, forced, one


def encoder(norm_first: bool, depth: int = 6):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 2, 64, batch_first=True, norm_first=norm_first)
    norm = nn.LayerNorm(32) if norm_first else None
    return nn.TransformerEncoder(layer, depth, norm=norm, enable_nested_tensor=False)


@pytest.fixture(scope="module")
def post_ln_run():
    from tests.test_state import snapshot

    torch.manual_seed(0)
    model, x = encoder(norm_first=False), torch.randn(2, 8, 32)
    before = snapshot(model)
    report = lint(model, x, select=["IL107", "IL204"], probe=True, device="cpu")
    return report, before, snapshot(model)


@pytest.fixture(scope="module")
def post_ln_report(post_ln_run):
    return post_ln_run[0]


def test_the_exported_model_is_left_as_it_was(post_ln_run):
    from tests.test_state import assert_same

    report, before, after = post_ln_run
    assert report.targets[0].capture == "export"
    assert_same(before, after)  # eager runs, Pre-LN twins and repairs all on copies or restored


def test_post_ln_confirmed_and_fixed(post_ln_report):
    (f,) = [f for f in post_ln_report.findings if f.code == "IL204"]
    confirmed_and_fixed(f)
    m = f.probe.measured
    # Post-LN's last-layer gradient above the same blocks arranged Pre-LN, but less than the sqrt(L) the
    # finding gives as the bound for branches as strong as their input (IL204's docs: 1.2-1.8 at these depths)
    assert PRE_LN_GAP <= m["last_layer_gradient"] / m["pre_ln_last_layer_gradient"] < 6 ** 0.5, m
    assert f.probe.after_fix["gradient_before_over_after"] >= PRE_LN_GAP


def test_cloned_layers_of_a_transformer_confirmed_and_fixed(post_ln_report):
    (f,) = [f for f in post_ln_report.findings if f.code == "IL107"]
    confirmed_and_fixed(f)
    assert f.probe.measured["contribution_correlation"] > 0.6
    assert abs(f.probe.after_fix["contribution_correlation"]) < 0.3


def test_post_ln_forced_on_pre_ln_not_reproduced():
    model = encoder(norm_first=True, depth=2)
    f = forced(model, torch.randn(2, 8, 32), "IL204", _first_norm(model), {})
    assert f.probe.status is NOT_REPRODUCED, (dict(f.probe.measured), f.probe.detail)


def _first_norm(model) -> str:
    from initlint.capture import capture
    from initlint.load import from_instance

    graph = capture(from_instance(model, torch.randn(2, 8, 32)))
    return next(op.name for op in graph if op.kind.value == "norm")


def rnn(orthogonal=False):
    torch.manual_seed(0)
    model = nn.RNN(16, 64, batch_first=True)
    if orthogonal:
        nn.init.orthogonal_(model.weight_hh_l0)
    return model


def test_recurrent_radius_confirmed_and_fixed():
    f = one(rnn(), torch.randn(2, 20, 16), "IL105")
    confirmed_and_fixed(f)
    m = f.probe.measured
    # radius 0.61 over 20 steps: the linear part predicts 0.61^20 = 5.6e-5; tanh's slopes take a little more
    assert m["gradient_factor"] < 1e-3 and m["gradient_factor"] > f.predicted["gradient_factor"] / 10, m
    assert 0.1 < f.probe.after_fix["gradient_factor"] <= 1.0  # orthogonal: radius 1, tanh's slopes only


def test_recurrent_radius_forced_on_a_near_one_radius_not_reproduced(monkeypatch):
    # radius 0.95: 0.95^20 = 0.36 over the sequence, inside the probe's [1/10, 10]; the rule is made to report
    # it by narrowing its band to 1.05 and its compounding threshold to 2
    rule = importlib.import_module("initlint.rules.recurrent_radius")
    monkeypatch.setattr(rule, "BAND", 1.05)
    monkeypatch.setattr(rule, "OVER_SEQUENCE", 2.0)
    model = rnn(orthogonal=True)
    with torch.no_grad():
        model.weight_hh_l0.mul_(0.95)
    f = one(model, torch.randn(2, 20, 16), "IL105")
    assert abs(f.predicted["spectral_radius"] - 0.95) < 1e-3
    assert f.probe.status is NOT_REPRODUCED, dict(f.probe.measured)
