"""IL206 non-inverted-dropout: hand-written keep-masks that do not divide by the keep probability."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity

# Train/eval mean ratio over 64 x 256 activations of a seeded layer, mask drawn per element: the mask's
# mean has a relative standard error sqrt((1 - q) / (q n)) < 1% at q = 0.5, n = 16384; 3% covers it with room.
MEAN_TOL = 0.03


class Net(nn.Module):
    def __init__(self, form="gt", p=0.5, norm=None):
        super().__init__()
        self.fc1, self.fc2, self.form, self.p, self.norm = nn.Linear(32, 256), nn.Linear(256, 10), form, p, norm

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if self.training:
            keep = 1 - self.p
            if self.form == "gt":
                h = h * (torch.rand_like(h) > self.p).float()
            elif self.form == "inverted":
                h = h * (torch.rand_like(h) > self.p).float() / keep
            elif self.form == "inverted_mask":
                h = h * ((torch.rand_like(h) < keep).float() / keep)
            elif self.form == "bernoulli_":
                h = h * torch.empty_like(h).bernoulli_(keep)
            elif self.form == "bernoulli_tensor":
                h = h * torch.bernoulli(torch.full_like(h, keep))
            elif self.form == "rounded":
                h = h * (torch.rand_like(h) < 0.9).float() * 1.1  # 1/0.9 rounded: 1% off
            elif self.form == "noise":
                h = h * (1 + 0.1 * torch.randn_like(h))  # multiplicative Gaussian noise, mean-preserving
            elif self.form == "module":
                h = nn.functional.dropout(h, self.p, training=True)
            elif self.form == "twice":
                h = h * (torch.rand_like(h) > self.p).float()
                h = h * (torch.rand_like(h) > self.p).float()
        if self.norm is not None:
            h = self.norm(h)
        return self.fc2(h)


def findings(model, x=None):
    report = lint(model, torch.randn(4, 32) if x is None else x, select=["IL206"])
    assert report.targets[0].error is None
    return report.findings


def test_a_mask_without_rescale_halves_the_training_mean():
    model = Net()
    (f,) = findings(model)
    assert f.severity is Severity.WARNING
    assert f.message == ("`mul` multiplies by a random keep-mask (keep 0.5) without dividing by it: in training the "
                         "mean is x0.5 and the second moment x0.5, and in eval, without the mask, the activations "
                         "are 2x the training ones")
    assert f.fix.code == "x = x * mask / 0.5  # or: self.drop = nn.Dropout(p=0.5); x = self.drop(x)"
    # what the numbers say, measured on the masked activations
    torch.manual_seed(0)
    x = torch.randn(64, 32)
    with torch.no_grad():
        h = torch.relu(model.fc1(x))
        masked = h * (torch.rand_like(h) > 0.5).float()
    assert masked.mean().item() / h.mean().item() == pytest.approx(f.predicted["train_mean_factor"], rel=MEAN_TOL)
    assert (masked.square().mean() / h.square().mean()).item() == pytest.approx(
        f.predicted["train_second_moment_factor"], rel=MEAN_TOL)


def test_bernoulli_masks_and_masks_in_series():
    (f,) = findings(Net("bernoulli_", p=0.1))
    assert f.predicted["keep_probability"] == pytest.approx(0.9)
    assert "are 1.11x the training ones" in f.message and "nn.Dropout(p=0.1)" in f.fix.code
    first, second = findings(Net("twice"))
    assert second.message.endswith("; with 1 such mask before it, the mean is x0.25 here")
    assert second.predicted["cumulative_mean_factor"] == pytest.approx(0.25)


def test_a_keep_probability_the_graph_does_not_show_is_still_reported():
    (f,) = findings(Net("bernoulli_tensor"))  # torch.bernoulli(torch.full_like(h, keep)): keep not recorded
    assert f.predicted == {"keep_probability": None}
    assert "never rescales" in f.message


def test_inverted_dropout_is_clean():
    for form in ("inverted", "inverted_mask", "rounded", "noise", "module"):
        assert findings(Net(form)) == [], form
    assert findings(Net("gt").eval()) == []  # the mask is not in the eval-mode graph


def test_a_layernorm_after_the_mask_makes_it_info_a_batchnorm_does_not():
    (f,) = findings(Net(norm=nn.LayerNorm(256)))
    assert f.severity is Severity.INFO
    (f,) = findings(Net(norm=nn.BatchNorm1d(256)))
    assert f.severity is Severity.WARNING  # BatchNorm's running statistics carry the training scale into eval
