"""A lint leaves the model exactly as it was: parameters, buffers, .grad, requires_grad, modes, RNG."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from initlint import lint


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.head(x.mean((2, 3)))


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "grad_ids": {n: id(p.grad) for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "attributes": {n: sorted(vars(m)) for n, m in model.named_modules()},
        "rng": torch.get_rng_state().clone(),
        "py_rng": random.getstate(),
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), f"{k} changed"
    for n, g in before["grads"].items():
        assert (g is None) == (after["grads"][n] is None) and (g is None or torch.equal(g, after["grads"][n])), n
    assert before["grad_ids"] == after["grad_ids"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["modes"] == after["modes"]
    assert before["attributes"] == after["attributes"]
    assert torch.equal(before["rng"], after["rng"])
    assert before["py_rng"] == after["py_rng"]


def prepared() -> Net:
    torch.manual_seed(1)
    model = Net()
    model(torch.randn(4, 3, 8, 8)).sum().backward()  # a real .grad on every parameter
    model.head.bias.requires_grad_(False)
    model.drop.eval()  # mixed modes
    return model


@pytest.mark.parametrize("rung", [None, "fx", "export", "hooks"])
def test_lint_leaves_model_untouched(rung):
    model = prepared()
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(model)
    report = lint(model, x, capture=rung, select=None)
    assert report.targets[0].error is None
    assert_same(before, snapshot(model))


class Constant(nn.Module):
    """A tensor built in forward, which torch.fx stows on the model it traces as ``_tensor_constant0``; a hot
    output layer, so that the probes run on it too."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        nn.init.normal_(self.fc.weight, std=1.0)

    def forward(self, x):
        return self.fc(x * torch.tensor([0.5, 2.0]).repeat(8))


@pytest.mark.parametrize("rung", [None, "fx", "export", "hooks"])
@pytest.mark.parametrize("probe", [False, True])
def test_constants_built_in_forward_are_not_left_on_the_model(rung, probe):
    torch.manual_seed(0)
    model, x = Constant(), torch.randn(8, 16)
    before = snapshot(model)
    report = lint(model, x, capture=rung, probe=probe, signals=probe)
    target = report.targets[0]
    assert target.error is None
    assert target.findings  # IL104: a layer this scale at the output
    assert not any(k.startswith("_tensor_constant") for k in vars(model))
    assert_same(before, snapshot(model))
    if probe:
        assert all(f.probe.fix_verified for f in target.findings)  # the repaired copy runs too


def test_snapshot_detects_a_change():
    """The check above can fail: a forward in training mode moves BatchNorm's running statistics."""
    model = prepared()
    before = snapshot(model)
    model(torch.randn(2, 3, 8, 8))
    with pytest.raises(AssertionError, match="running_mean changed"):
        assert_same(before, snapshot(model))


def test_transformers_model_untouched():
    from . import real_models as R

    model, inputs = R.gpt2()
    before = snapshot(model)
    report = lint(model, inputs)
    assert report.targets[0].capture == "export"
    assert_same(before, snapshot(model))


class Meddler(nn.Module):
    """A forward that changes what preserved() restores, each in a different way: buffers written in place,
    through ``.data`` (which leaves ``_version`` as it was) and rebound; a mode, ``requires_grad`` and ``.grad``
    flipped; a shared submodule; and every generator drawn from."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.shared = nn.Linear(4, 4)
        self.again = self.shared
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("mask", torch.ones(4, dtype=torch.bool))
        self.register_buffer("table", torch.arange(12.0).reshape(3, 4).t())  # not contiguous
        self.register_buffer("low", torch.ones(4, dtype=torch.float16))

    def forward(self, x):
        import numpy as np

        self.count += 1
        self.mask.data.zero_()
        self.table.data.mul_(2.0)
        self.low = self.low * 3  # rebinds the attribute
        self.shared.train(not self.shared.training)
        self.fc.bias.requires_grad_(not self.fc.bias.requires_grad)
        self.fc.weight.grad = torch.ones_like(self.fc.weight)
        random.random()
        np.random.standard_normal()  # the legacy Gaussian caches its second value: a state beyond the key
        torch.rand(1)
        return self.again(self.fc(x))


def test_preserved_restores_what_a_forward_changes():
    import numpy as np

    from initlint.state import preserved

    np.random.seed(3)
    np.random.standard_normal()  # has a cached Gaussian now
    model = Meddler()
    model.fc.weight.grad = torch.zeros_like(model.fc.weight)
    before, np_before = snapshot(model), np.random.get_state()
    with preserved(model):
        model(torch.randn(2, 4))
        model(torch.randn(2, 4))
    assert_same(before, snapshot(model))
    np_after = np.random.get_state()
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(np_before, np_after))
    assert model.low.dtype == torch.float16 and not model.table.is_contiguous()


def test_numpy_generator_is_left_alone_until_imported(monkeypatch):
    """numpy 2 makes its global generator when ``numpy.random`` is first imported: before that there is no
    state to keep, and preserved() does not import it to save one."""
    import sys

    from initlint import state

    monkeypatch.delitem(sys.modules, "numpy.random", raising=False)
    assert state._numpy_state() is None
    assert "numpy.random" not in sys.modules


def test_garbage_collector_is_left_as_it_was():
    """The static stages pause Python's cyclic collector (initlint.api.collector_paused) and resume it after,
    also when the lint fails; a collector the caller paused stays paused."""
    import gc

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(gc.isenabled())
            return x * 2

    assert gc.isenabled()
    lint(Spy(), torch.randn(2, 3))
    assert seen and not any(seen)  # paused while the model ran under capture
    assert gc.isenabled()
    report = lint(Broken(), torch.randn(2, 3))
    assert report.targets[0].error is not None and gc.isenabled()
    gc.disable()
    try:
        lint(Net(), torch.randn(2, 3, 8, 8))
        assert not gc.isenabled()
    finally:
        gc.enable()
