"""IL106 symmetric-init: constant or zero hidden layers, and the deliberate zero inits that are not findings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity

TANH_GAIN = 5 / 3


def mlp(first=None, second=None, head=None, zero_bias=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    for layer, init in zip((model[0], model[2], model[4]), (first, second, head)):
        if init is not None:
            init(layer.weight)
        if zero_bias:
            nn.init.zeros_(layer.bias)
    return model


def const(w):
    return nn.init.constant_(w, 0.1)


def findings(model, *inputs):
    report = lint(model, inputs[0] if len(inputs) == 1 else inputs, select=["IL106"])
    assert report.targets[0].error is None
    return report.findings


def test_constant_everywhere_ties_the_units_for_ever():
    model = mlp(const, const, const)
    fs = findings(model, torch.randn(8, 16))
    assert [(f.module, f.severity) for f in fs] == [("0", Severity.ERROR), ("2", Severity.ERROR)]  # not the head
    assert fs[0].message == ("every weight of `0` equals 0.1 and `0` feeds `2`: its 64 units compute the same value; "
                             "the layers it feeds have equal weights too, so the units get equal gradients and "
                             "stay tied")
    assert fs[0].predicted["tied_units"] == 64 and fs[0].predicted["permanent"] is True
    assert fs[0].fix.code == ('nn.init.normal_(model.get_parameter("0.weight"), mean=0.0, std=0.417)  '
                              "# gain 1.67 / sqrt(fan-in 16)")
    # what "stay tied" means: after training steps the 64 rows of the first layer are still equal
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 16), torch.randn(64, 1)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    w = model[0].weight.detach()
    assert torch.equal(w, w[:1].expand_as(w))


def test_a_constant_layer_before_a_random_one_is_a_warning():
    (f,) = findings(mlp(first=const), torch.randn(8, 16))
    assert f.severity is Severity.WARNING and f.predicted["permanent"] is False
    assert f.message.endswith("its 64 units compute the same value")


def test_a_zero_hidden_layer_passes_no_gradient_back():
    model = mlp(second=nn.init.zeros_)
    (f,) = findings(model, torch.randn(8, 16))
    assert f.message == ("`2.weight` is all zeros and `2` feeds `4`: its 64 units all output the same bias value, "
                         "and no gradient flows through it to the layers before")
    assert f.predicted["input_gradient"] == 0.0
    model(torch.randn(8, 16)).sum().backward()
    assert model[0].weight.grad.abs().max().item() == 0.0  # what input_gradient 0.0 says
    assert f.fix.code.startswith('nn.init.normal_(model.get_parameter("2.weight"), mean=0.0, std=0.208)')
    assert 0.208 == pytest.approx(TANH_GAIN / 64 ** 0.5, abs=5e-4)


def test_random_biases_keep_constant_units_apart_but_it_is_still_reported():
    fs = findings(mlp(const, const, const, zero_bias=False), torch.randn(8, 16))
    assert [f.severity for f in fs] == [Severity.WARNING, Severity.WARNING]
    assert fs[0].message.endswith("its 64 units compute the same weighted sum, differing only by their bias")


def test_the_fix_is_clean():
    model = mlp(const, const, const)
    for f in findings(model, torch.randn(8, 16)):
        exec(f.fix.code, {"nn": nn, "model": model})
    assert findings(model, torch.randn(8, 16)) == []


class Deliberate(nn.Module):
    """Every deliberate zero or constant init: residual branch end, LoRA B, gate, LayerScale, head, norms, biases."""

    def __init__(self, d=32):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.lora_a, self.lora_b = nn.Linear(d, 4, bias=False), nn.Linear(4, d, bias=False)
        self.gate = nn.Linear(d, d)
        self.gamma = nn.Parameter(torch.zeros(d))
        self.head = nn.Linear(d, 10)
        for m in (self.fc2, self.lora_b, self.gate, self.head):
            nn.init.zeros_(m.weight)

    def forward(self, x):
        x = x + self.fc2(torch.relu(self.fc1(self.ln(x))))  # Fixup-style zero branch end
        x = x + self.lora_b(self.lora_a(x))  # LoRA
        x = x * (1 + self.gate(x))  # adaLN-Zero-style modulation
        x = x + self.gamma * x  # LayerScale / ReZero
        return self.head(x)  # zero output head


def test_deliberate_zero_inits_are_not_hidden_layers():
    assert findings(Deliberate(), torch.randn(2, 5, 32)) == []


def test_frozen_constant_filters_are_deliberate():
    class Blur(nn.Module):
        def __init__(self):
            super().__init__()
            self.blur = nn.Conv2d(3, 3, 3, padding=1, bias=False)
            nn.init.constant_(self.blur.weight, 1 / 27)
            self.blur.weight.requires_grad_(False)
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.conv(self.blur(x))

    assert findings(Blur(), torch.randn(1, 3, 8, 8)) == []


def test_a_constant_depthwise_conv_ties_nothing_but_a_zero_one_is_dead():
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 8, 1))
    nn.init.constant_(net[0].weight, 1 / 9)  # a box blur per channel: channels see different inputs
    assert findings(net, torch.randn(1, 8, 8, 8)) == []
    nn.init.zeros_(net[0].weight)
    (f,) = findings(net, torch.randn(1, 8, 8, 8))
    assert "its 8 channels (one per group) output only their bias" in f.message and "no gradient flows" in f.message


def test_weights_of_exported_models_are_checked_too():
    """nn.MultiheadAttention is captured by torch.export: its weights must still read as trainable."""

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
            nn.init.zeros_(self.up.weight)

        def forward(self, x):
            x = x + self.attn(x, x, x, need_weights=False)[0]
            return x + self.down(torch.relu(self.up(x)))

    report = lint(Attn(), torch.randn(2, 4, 16), select=["IL106"])
    assert report.targets[0].capture == "export"
    assert [f.module for f in report.findings] == ["up"]
