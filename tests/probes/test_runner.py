"""The probe runner's economies keep its numbers: autocast products computed in float32 and rounded, range
statistics read from float16 bits, forward-only passes that stop at their last read op, one instrumented module per
runnable, an exported program unlifted once."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from initlint.capture import capture_program
from initlint.load import from_instance
from initlint.probes.precision import FP16_TINY, _range_stats
from initlint.probes.records import Needs, Tap
from initlint.probes.runner import LowPrecisionProducts, Runnable, run_pass

CPU = torch.device("cpu")


def _reference_range_stats(t: torch.Tensor) -> list[float]:
    """The statistics as first written: a float32 copy and a boolean-mask gather."""
    x = t.detach()
    bad = ~torch.isfinite(x)
    a = x.float().abs()
    finite_max = a[~bad].max() if bool((~bad).any()) else torch.tensor(0.0)
    return torch.stack([bad.float().mean(), (a < FP16_TINY).float().mean(), (a == 0).float().mean(),
                        finite_max.float(), torch.tensor(float(x.numel()))]).tolist()


@pytest.mark.parametrize("values", [
    torch.randn(4096) * 1e-4,
    torch.tensor([1.0, math.inf, math.nan, 0.0, -0.0, 3e-6, -7e4, 6.1e-5, 6.2e-5, 65504.0]),
    torch.randn(64, 64) * 3000,
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_range_stats_match_the_float32_reading(values, dtype):
    x = values.to(dtype)
    assert _range_stats(x).tolist() == _reference_range_stats(x)


def test_low_precision_products_give_autocast_values():
    """float16 operands, float32 accumulation, a float16 result: what the CPU's half kernels compute, to the
    float32 summation order; overflow still reaches inf."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 32))
    x = torch.randn(4, 8, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        real = model(x)
        with LowPrecisionProducts(torch.float16):
            emulated = model(x)
    assert emulated.dtype == real.dtype == torch.float16
    assert torch.allclose(emulated.float(), real.float(), rtol=2e-3, atol=1e-3)
    big = nn.Linear(64, 64)
    with torch.no_grad():
        big.weight.fill_(100.0)
        with torch.autocast("cpu", dtype=torch.float16), LowPrecisionProducts(torch.float16):
            y = big(torch.full((2, 64), 20.0))
    assert torch.isinf(y).all()


class Guarded(nn.Module):
    """A model whose own code catches every Exception around its body."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)
        self.calls = 0

    def forward(self, x):
        try:
            return self.b(torch.relu(self.a(x)))
        except Exception:  # noqa: BLE001
            self.calls += 1
            return x


@pytest.mark.parametrize("force", [None, "hooks"])  # hooks: the model's own forward runs, its except included
def test_autocast_pass_stops_after_its_last_tap_and_reads_it(force):
    torch.manual_seed(0)
    model = Guarded()
    graph, program = capture_program(from_instance(model, torch.randn(4, 16)), force=force)
    first = next(op.name for op in graph if op.module == "a")
    seen = []
    tap = Tap(first, "range", lambda t: seen.append(t.dtype) or _range_stats(t))
    ev = run_pass(Runnable.of(program, graph), Needs.of(taps=[tap]), CPU, autocast=torch.float16)
    assert seen == [torch.float16] and (first, "range") in ev.taps
    assert model.calls == 0  # the stop is not an Exception the model's code handles


@pytest.mark.parametrize("force", [None, "hooks"])
def test_forward_moments_alone_run_no_backward_and_stop_at_the_last_op_read(force):
    """``forward_ops`` read the same forward moments as ``ops`` (bit for bit: the same ops on the same seeded
    inputs), with no backward, and the layer after the last op read never runs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Linear(16, 4))
    graph, program = capture_program(from_instance(model, torch.randn(8, 16)), force=force)
    a, b = (next(op.name for op in graph if op.module == m) for m in ("0", "2"))
    calls = []
    handle = model[3].register_forward_hook(lambda *_: calls.append(1))
    try:
        run = Runnable.of(program, graph)
        full = run_pass(run, Needs.of(ops=[a, b]), CPU)
        assert len(calls) == 1
        alone = run_pass(run, Needs.of(forward_ops=[a, b]), CPU)
        assert len(calls) == 1  # stopped after `2`
        mixed = run_pass(run, Needs.of(ops=[a], forward_ops=[b]), CPU)  # one gradient read: a full pass
        assert len(calls) == 2
    finally:
        handle.remove()
    for op in (a, b):
        assert alone.signals[op].forward == full.signals[op].forward
        assert full.signals[op].backward is not None and alone.signals[op].backward is None
    assert mixed.signals[a].backward == full.signals[a].backward


def test_program_runnable_and_its_instrumentation_are_built_once():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    graph, program = capture_program(from_instance(model, torch.randn(4, 8)))
    r = Runnable.of(program, graph)
    assert Runnable.of(program, graph) is r
    assert r.instrumented() is r.with_inputs(r.inputs, r.values).instrumented()
    twin = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    other = Runnable.of(program, graph, twin)
    assert other is not r and other.instrumented()[0] is not r.instrumented()[0]


def test_exported_copy_runs_on_the_copys_weights():
    """The repaired copy runs the program's graph on the copy's tensors (passed to the lifted graph by name); the
    program's own still reads the model's, and the program is never unlifted."""
    import copy

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    x = torch.randn(2, 5, 16)
    graph, program = capture_program(from_instance(model, x))
    if program.module() is None:
        pytest.skip("not an exported capture here")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    r = Runnable.of(program, graph)
    with torch.no_grad():
        mine = r(*r.call_args()[0])
        t = Runnable.of(program, graph, twin)
        theirs = t(*t.call_args()[0])
        assert not torch.allclose(mine, theirs)  # the copy's halved weights
        assert torch.equal(r(*r.call_args()[0]), mine)  # the program's own module still reads the model's
        assert torch.allclose(mine, model(x), atol=1e-5)
    assert r.lifted and "module" not in program.cache  # not unlifted
