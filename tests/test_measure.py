"""The measurement pass: it agrees with the engine on small models, covers every op, repeats itself, and
leaves the model exactly as it was (parameters, buffers, .grad, requires_grad, modes, random generators)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from initlint.capture import capture_program
from initlint.errors import UsageError
from initlint.load import from_instance
from initlint.measure import measure, resolve_device
from initlint.ops import OpKind
from initlint.propagate import predict

FACTOR = 0.585  # |log2(predicted / measured)| <= log2 1.5: the agreement criterion of issue 3


class Block(nn.Module):
    """Conv, BatchNorm, ReLU, dropout and a residual: the ops whose state a pass could disturb."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        h = x + self.drop(torch.relu(self.bn(self.conv(x))))
        return self.head(h)  # a map, not a pooled vector: its gradient has many independent entries


class PreLN(nn.Module):
    """A Pre-LN transformer block written out (torch.fx traces it; nn.TransformerEncoderLayer needs export)."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10))
    enc = PreLN()
    return {
        "mlp": (mlp, torch.randn(128, 64)),
        "block": (Block(), torch.randn(8, 8, 16, 16)),
        "encoder": (enc, torch.randn(8, 16, 32)),
    }


def _snapshot(model: nn.Module):
    return {
        "params": {n: (p, p.detach().clone(), p.requires_grad, None if p.grad is None else (p.grad, p.grad.clone()))
                   for n, p in model.named_parameters()},
        "buffers": {n: (b, b.detach().clone()) for n, b in model.named_buffers()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "torch_rng": torch.get_rng_state(),
        "py_rng": random.getstate(),
    }


def _assert_unchanged(model: nn.Module, before) -> None:
    for n, p in model.named_parameters():
        obj, value, req, grad = before["params"][n]
        assert p is obj and torch.equal(p.detach(), value), f"parameter {n} changed"
        assert p.requires_grad == req, f"requires_grad of {n} changed"
        if grad is None:
            assert p.grad is None, f"{n}.grad was written"
        else:
            assert p.grad is grad[0] and torch.equal(p.grad, grad[1]), f"{n}.grad changed"
    for n, b in model.named_buffers():
        obj, value = before["buffers"][n]
        assert b is obj and torch.equal(b, value), f"buffer {n} changed"
    assert {n: m.training for n, m in model.named_modules()} == before["modes"]
    assert torch.equal(torch.get_rng_state(), before["torch_rng"])
    assert random.getstate() == before["py_rng"]


@pytest.mark.parametrize("name", ["mlp", "block", "encoder"])
def test_measurement_agrees_with_the_prediction(name):
    model, x = _models()[name]
    target = from_instance(model, x)
    graph, program = capture_program(target)
    measured = measure(graph, program, "cpu")
    pred = predict(graph, target.inputs, model=model, measured=measured)
    checked = 0
    for op in graph:
        m, p = measured.get(op.name), pred.signals[op.name]
        if m is None or op.kind is OpKind.OUTPUT:
            continue
        if op.name in pred.covered(graph):
            assert abs(math.log2(p.forward.second / m.forward.second)) <= FACTOR, f"forward at {op.name}"
            checked += 1
        if m.backward is not None and p.backward is not None and m.backward.second > 0:
            assert abs(math.log2(p.backward.second / m.backward.second)) <= FACTOR, f"backward at {op.name}"
            checked += 1
    assert checked >= len(graph)  # forward and backward at most ops


@pytest.mark.parametrize("force", ["fx", "export", "hooks"])
def test_every_op_of_an_mlp_is_measured_on_each_capture(force):
    model, x = _models()["mlp"]
    graph, program = capture_program(from_instance(model, x), force)
    measured = measure(graph, program, "cpu")
    ops = [op.name for op in graph if op.kind not in (OpKind.OUTPUT, OpKind.PARAM)]
    assert set(ops) <= set(measured), f"unmeasured: {set(ops) - set(measured)}"
    assert all(measured[n].backward is not None for n in ops), "a gradient was not recorded"
    assert all(measured[n].max_abs >= math.sqrt(measured[n].forward.second) for n in ops)


@pytest.mark.parametrize("force", ["fx", "export", "hooks"])
def test_the_model_is_left_exactly_as_it_was(force):
    model, x = _models()["block"]
    model.bn.eval()  # a mode the pass must put back
    model.head.weight.grad = torch.full_like(model.head.weight, 3.0)  # a gradient it must not touch
    model.conv.bias.requires_grad_(False)
    random.seed(7)
    graph, program = capture_program(from_instance(model, x), force)
    before = _snapshot(model)
    measured = measure(graph, program, "cpu")
    assert measured  # it did run
    _assert_unchanged(model, before)


def test_the_running_statistics_move_during_the_pass_and_are_put_back():
    model, x = _models()["block"]
    graph, program = capture_program(from_instance(model, x))
    seen = []
    model.bn.register_forward_hook(lambda m, i, o: seen.append(m.running_mean.clone()))
    before = model.bn.running_mean.clone()
    measure(graph, program, "cpu")
    assert seen and not torch.equal(seen[-1], before)  # training mode: BatchNorm updated its statistics
    assert torch.equal(model.bn.running_mean, before)


def test_measurements_repeat_exactly_on_cpu():
    model, x = _models()["block"]
    graph, program = capture_program(from_instance(model, x))
    a, b = measure(graph, program, "cpu", seed=3), measure(graph, program, "cpu", seed=3)
    assert a == b
    c = measure(graph, program, "cpu", seed=4)
    assert c != a  # the seed sets the dropout masks and the loss targets


def test_device_choices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError):
            resolve_device("cuda")


def test_signals_in_the_report_and_json():
    from initlint.api import lint

    model, x = _models()["mlp"]
    report = lint(model, x, select=[], signals=True, device="cpu")
    rows = report.to_dict()["targets"][0]["signals"]
    assert [r["op"] for r in rows] == [op.name for op in report.targets[0].graph if op.kind is not OpKind.OUTPUT]
    first = rows[1]
    assert set(first) == {"op", "module", "kind", "forward", "backward"}
    assert abs(math.log2(first["forward"]["predicted"] / first["forward"]["measured"])) <= FACTOR
