"""IL105 recurrent-radius: vanilla recurrences whose matrix has a spectral radius far from 1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity
from initlint.patterns import sig

# PyTorch's default U(-1/sqrt(h), 1/sqrt(h)) has radius about 1/sqrt(3) = 0.577 for large h; measured at
# h = 64 over 20 seeds: 0.57 to 0.67.
DEFAULT_RADIUS, DEFAULT_SPREAD = 0.577, 0.1


def radius(w):
    return torch.linalg.eigvals(w.detach().double()).abs().max().item()


def findings(model, inputs):
    report = lint(model, inputs, select=["IL105"])
    assert report.targets[0].error is None
    return report.findings


class Loop(nn.Module):
    """A tanh (or ReLU) RNN written by hand, as in tutorials."""

    def __init__(self, act=torch.tanh, std=None, hidden=32, steps=12):
        super().__init__()
        self.ih, self.hh, self.act = nn.Linear(4, hidden), nn.Linear(hidden, hidden, bias=False), act
        self.hidden, self.steps = hidden, steps
        if std is not None:
            nn.init.normal_(self.hh.weight, std=std)

    def forward(self, x):
        h = torch.zeros(2, self.hidden)
        for t in range(self.steps):  # a constant length keeps it traceable by torch.fx
            h = self.act(self.ih(x[:, t]) + self.hh(h))
        return h


def test_default_rnn_init_vanishes_over_the_sequence():
    torch.manual_seed(0)
    model = nn.RNN(16, 64, batch_first=True)
    (f,) = findings(model, torch.randn(2, 20, 16))
    rho = radius(model.weight_hh_l0)
    assert rho == pytest.approx(DEFAULT_RADIUS, abs=DEFAULT_SPREAD)
    assert f.severity is Severity.WARNING
    assert f.message == (f"the tanh RNN has recurrent spectral radius {sig(rho, 2)}: over the 20 steps of the "
                         f"example input the gradient through the recurrence scales as {sig(rho, 2)}^20 = "
                         f"{sig(rho ** 20, 2)}")
    assert f.predicted["gradient_factor"] == pytest.approx(rho ** 20)
    assert f.fix.code == 'nn.init.orthogonal_(model.get_parameter("weight_hh_l0"))'


def test_the_fix_gives_radius_1_and_silences_the_rule():
    torch.manual_seed(0)
    model = nn.RNN(16, 64, batch_first=True)
    x = torch.randn(2, 20, 16)
    (f,) = findings(model, x)
    exec(f.fix.code, {"nn": nn, "model": model})
    assert radius(model.weight_hh_l0) == pytest.approx(1.0, abs=1e-6)
    assert findings(model, x) == []


def test_relu_rnn_layers_are_all_listed_and_the_fix_is_the_identity():
    torch.manual_seed(0)
    model = nn.RNN(8, 32, num_layers=2, nonlinearity="relu", bidirectional=True)
    (f,) = findings(model, torch.randn(12, 2, 8))
    assert len(f.predicted["radii"]) == 4
    assert f.predicted["spectral_radius"] == min(f.predicted["radii"])  # all below 1: the smallest is farthest
    assert f.fix.code.count("nn.init.eye_(") == 4


def test_hand_written_recurrences_are_found():
    torch.manual_seed(0)
    model = Loop(std=0.5)  # radius about 0.5 * sqrt(32) = 2.8
    (f,) = findings(model, torch.randn(2, 12, 4))
    rho = radius(model.hh.weight)
    assert f.message.startswith(f"`hh` (hand-written tanh recurrence) has recurrent spectral radius {sig(rho, 2)}")
    assert f.predicted["seq_len"] == 12
    assert f.fix.code == 'nn.init.orthogonal_(model.get_parameter("hh.weight"))'
    relu = Loop(act=torch.relu, std=0.5)
    (f,) = findings(relu, torch.randn(2, 12, 4))
    assert "hand-written relu recurrence" in f.message and "nn.init.eye_(" in f.fix.code


def test_good_inits_are_clean():
    torch.manual_seed(0)
    orthogonal = nn.RNN(16, 64, batch_first=True)
    nn.init.orthogonal_(orthogonal.weight_hh_l0)
    xavier = nn.RNN(16, 64, batch_first=True)
    nn.init.xavier_normal_(xavier.weight_hh_l0)  # radius 1.0-1.2 at h = 64
    loop = Loop()
    nn.init.orthogonal_(loop.hh.weight)
    for model in (orthogonal, xavier):
        assert findings(model, torch.randn(2, 20, 16)) == []
    assert findings(loop, torch.randn(2, 12, 4)) == []


def test_near_misses_short_sequences_gated_cells_and_shared_layers_in_parallel():
    torch.manual_seed(0)
    # radius 0.6 over 3 steps is 0.2: less than the factor 10 the rule asks for
    assert findings(nn.RNN(16, 64, batch_first=True), torch.randn(2, 3, 16)) == []
    # LSTMs and GRUs are gated: not vanilla recurrences
    assert findings(nn.LSTM(16, 64), torch.randn(20, 2, 16)) == []
    assert findings(nn.GRU(16, 64), torch.randn(20, 2, 16)) == []

    class Siamese(nn.Module):  # one square layer on two inputs: shared, not recurrent
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(16, 16)

        def forward(self, a, b):
            return self.enc(a) - self.enc(b)

    assert findings(Siamese(), (torch.randn(2, 16), torch.randn(2, 16))) == []

    class Stack(nn.Module):  # one layer applied twice with a LayerNorm between: a weight-tied stack, not an RNN
        def __init__(self):
            super().__init__()
            self.fc, self.ln = nn.Linear(16, 16), nn.LayerNorm(16)

        def forward(self, x):
            for _ in range(6):
                x = self.ln(torch.relu(self.fc(x)))
            return x

    assert findings(Stack(), torch.randn(2, 16)) == []
