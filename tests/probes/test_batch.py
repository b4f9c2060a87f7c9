"""The stage's passes run on fewer samples where every op they read keeps enough elements."""

import torch
from torch import nn

from initlint.capture import capture_program
from initlint.load import from_instance
from initlint.probe import ELEMENTS, MIN_BATCH, _enough_batch
from initlint.probes import PROBES
from initlint.probes.records import Needs
from initlint.probes.runner import Runnable, capped


def _setup(model, x):
    target = from_instance(model, x)
    graph, program = capture_program(target)
    return graph, capped(Runnable.of(program, graph), 32, 64)


def test_wide_ops_are_read_on_fewer_samples_narrow_ones_on_all():
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    graph, run = _setup(model, torch.randn(64, 1024))
    wide = [op.name for op in graph if op.shape and op.shape[-1] == 1024 and op.kind.value != "input"]
    narrow = [op.name for op in graph if op.shape == (64, 10)]
    assert _enough_batch(graph, run, Needs.of(ops=wide), [PROBES["IL303"]], 32) == ELEMENTS // 1024
    assert _enough_batch(graph, run, Needs.of(ops=wide + narrow), [PROBES["IL303"]], 32) is None
    # a probe with experiments of its own on the example inputs keeps them
    assert _enough_batch(graph, run, Needs.of(ops=wide), [PROBES["IL303"], PROBES["IL204"]], 32) is None


def test_at_least_min_batch_samples():
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU())
    graph, run = _setup(model, torch.randn(32, 3, 32, 32))
    ops = [op.name for op in graph if op.kind.value == "conv"]
    assert _enough_batch(graph, run, Needs.of(ops=ops), [PROBES["IL101"]], 32) == MIN_BATCH


class _ParamBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.offset = nn.Parameter(torch.randn(16))

    def forward(self, x):
        return self.fc(x) + self.offset * 2.0


def test_backward_to_the_inputs_only_keeps_every_gradient_read():
    """Without parameter norms to read the backward stops at the inputs; an op whose gradient only reaches a
    parameter (``offset * 2``) still gets its backward statistics (the rest of the backward runs)."""
    from initlint.probes.runner import run_pass

    torch.manual_seed(0)
    model = _ParamBranch()
    graph, run = _setup(model, torch.randn(8, 16))
    ops = [op.name for op in graph if op.kind.value in ("linear", "scale", "mul", "add")]
    assert ops
    ev = run_pass(run, Needs.of(ops=ops), torch.device("cpu"))
    full = run_pass(run, Needs.of(ops=ops, params=["fc.weight"]), torch.device("cpu"))
    for name in ops:
        assert ev.signals[name].backward is not None, name
        assert ev.signals[name].backward == full.signals[name].backward, name


class _FixedBatch(nn.Module):
    """A model that only runs at a batch of 32 (a hard-coded view)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2048, 2048)
        self.out = nn.Linear(2048, 2048)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x))).view(32, -1)


def test_a_model_that_needs_its_batch_is_probed_at_the_cap():
    from initlint import lint

    torch.manual_seed(0)
    model = _FixedBatch()
    torch.nn.init.normal_(model.fc.weight, std=1.0)
    report = lint(model, torch.randn(32, 2048), select=["IL101"], probe=True, device="cpu")
    (f,) = report.findings
    assert f.probe.status.value == "confirmed", f.probe.detail
