"""IL301: the model under torch.autocast in float16 (bfloat16 where the finding says it holds)."""

from __future__ import annotations

import importlib
import re

import torch
from torch import nn

from initlint import lint
from initlint.probe import fix

from .stage import NOT_REPRODUCED, confirmed_and_fixed, probed

# Claim 12: std 1e5 after five x10 layers, 51% inf; the probe counts on 64 x 512 values: within 0.05.
FRACTION_TOLERANCE = 0.05


def linear_stack(std_factor: float, depth: int = 5):
    torch.manual_seed(0)
    layers = [nn.Linear(512, 512, bias=False) for _ in range(depth)]
    for layer in layers:
        nn.init.normal_(layer.weight, std=std_factor / 512**0.5)
    return nn.Sequential(*layers)


def _finding(model, key):
    found = [f for f in probed(model, torch.randn(64, 512), "IL301") if key in f.predicted]
    assert len(found) == 1, [f.message for f in found]
    return found[0]


def test_overflow_confirmed_and_fixed():
    f = _finding(linear_stack(10.0), "overflow_fraction")
    confirmed_and_fixed(f)
    m = f.probe.measured
    assert abs(m["overflow_fraction"] - f.predicted["overflow_fraction"]) < FRACTION_TOLERANCE, m
    assert m["bf16_overflow_fraction"] == 0.0  # bfloat16's range holds it, as the finding says
    assert "first inf/nan at `4`" in f.probe.detail
    assert f.probe.after_fix["overflow_fraction"] == 0.0


def test_underflow_confirmed_and_fixed():
    f = _finding(linear_stack(0.1, depth=5), "subnormal_fraction")
    confirmed_and_fixed(f)
    assert f.probe.measured["subnormal_fraction"] > 0.5
    assert f.probe.after_fix["subnormal_fraction"] < 0.01


def test_overflow_forced_on_unit_scale_not_reproduced(monkeypatch):
    rule = importlib.import_module("initlint.rules.fp16_range")
    monkeypatch.setattr(rule, "FP16_MAX", 1.0)  # the rule now sees overflow at |x| > 1
    found = [f for f in probed(linear_stack(1.0), torch.randn(64, 512), "IL301") if "overflow_fraction" in f.predicted]
    assert found and found[0].probe.status is NOT_REPRODUCED, [dict(f.probe.measured) for f in found]


class RawAudio(nn.Module):
    """A conv front end fed int16-scale samples: no layer is off its std, the input is 1e4x off unit scale."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv1d(1, 32, 9, stride=4), nn.Conv1d(32, 32, 9, stride=4)
        self.head = nn.Linear(32, 8)
        for m in (self.conv1, self.conv2):  # variance-preserving: no layer to blame
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, wav):
        x = torch.relu(self.conv2(torch.relu(self.conv1(wav))))
        return self.head(x.mean(-1))


def test_raw_input_overflow_fixed_by_normalizing_the_input():
    model = RawAudio()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    wav = 16000.0 * torch.randn(4, 1, 4000)
    torch.manual_seed(0)
    report = lint(model, wav, select=["IL301"], probe=True, device="cpu")
    f = next(f for f in report.targets[0].findings if "overflow_fraction" in f.predicted)
    printed = float(re.search(r"^wav = wav / (\S+)  #", f.fix.code, re.M).group(1))
    rms = float(wav.square().mean().sqrt())
    assert abs(printed / rms - 1) < 0.01, f.fix.code  # the input's rms, to the digits printed
    confirmed_and_fixed(f)
    assert f.probe.measured["overflow_fraction"] > 0 and f.probe.after_fix["overflow_fraction"] == 0.0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model untouched
    with torch.no_grad():  # the machine form is the printed line: the model on the input divided by its rms
        assert torch.allclose(fix(model, report, wav)(wav), model(wav / rms), rtol=1e-4, atol=1e-6)
