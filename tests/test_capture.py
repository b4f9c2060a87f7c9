"""The capture ladder on small models: the op vocabulary, fans, source lines, fallbacks, coverage."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from initlint.capture import capture
from initlint.load import from_instance, load
from initlint.ops import Activation, Capture, OpKind

from .data import capture_models as cm

DATA = os.path.join(os.path.dirname(__file__), "data", "capture_models.py")


def _line(marker: str) -> int:
    with open(DATA) as fh:
        for i, text in enumerate(fh, 1):
            if marker in text:
                return i
    raise AssertionError(marker)


def _graph(model, *inputs):
    return capture(from_instance(model, inputs))


def _kinds(g):
    return [op.kind for op in g if op.kind not in (OpKind.INPUT, OpKind.OUTPUT)]


def test_sequential_mlp_is_traced_with_fx_into_typed_ops():
    g = _graph(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), torch.randn(2, 8))
    assert g.capture is Capture.FX
    assert _kinds(g) == [OpKind.LINEAR, OpKind.ACTIVATION, OpKind.LINEAR]
    first = next(iter(g.of_kind(OpKind.LINEAR)))
    assert (first.weight.fan_in, first.weight.fan_out) == (8, 16)
    assert first.shape == (2, 16)
    assert g.op(g.of_kind(OpKind.ACTIVATION)[0].name).params.fn is Activation.RELU


def test_functional_calls_parameters_and_constants_are_normalized():
    g = _graph(cm.Functional(), torch.randn(2, 4))
    kinds = _kinds(g)
    assert kinds.count(OpKind.LINEAR) == 2  # F.linear with a parameter counts as a layer
    scales = g.of_kind(OpKind.SCALE)
    by_factor = sorted(round(op.params.factor, 6) for op in scales)
    assert by_factor == [0.1, 0.5]  # LayerScale gamma (rms 0.1) and / 2.0
    gamma = next(op for op in scales if op.params.param)
    assert gamma.params.param == "gamma" and gamma.params.learned
    add = g.of_kind(OpKind.ADD)[0]
    assert add.inputs[0] == add.inputs[1]  # h + h: the same source twice
    cat = g.of_kind(OpKind.CONCAT)[0]
    assert cat.params.sizes == (8, 8)


def test_forward_lines_and_construction_lines_are_recorded():
    target = load(f"{DATA}:Functional", input_shapes=[(2, 4)])
    g = capture(target)
    linears = g.of_kind(OpKind.LINEAR)
    functional = next(op for op in linears if op.weight.name == "w")
    module = next(op for op in linears if op.weight.name == "proj.weight")
    assert functional.location.line == _line("LINE_LINEAR")
    assert module.location.line == _line("LINE_PROJ_CALLED")
    assert module.defined_at.line == _line("LINE_PROJ_DEFINED")
    assert module.location.file.endswith("capture_models.py")


def test_shape_dependent_control_flow_falls_back_to_export_with_lines():
    g = _graph(cm.ShapeDependent(), torch.randn(2, 4))
    assert g.capture is Capture.EXPORT
    assert any("torch.fx could not trace" in n for n in g.notes)
    fc = g.of_kind(OpKind.LINEAR)[0]
    assert fc.location.line == _line("LINE_SHAPE_FC")
    assert fc.module == "fc"


def test_value_dependent_control_flow_falls_back_to_hooks():
    g = _graph(cm.DataDependent(), torch.randn(2, 4))
    assert g.capture is Capture.HOOKS
    assert len(g.notes) == 2  # why fx and why export gave up
    assert [op.kind for op in g.of_kind(OpKind.LINEAR)] == [OpKind.LINEAR]


def test_unknown_ops_are_listed_in_coverage_not_fatal():
    g = _graph(cm.Unsupported(), torch.randn(2, 4))
    assert g.unknown == ("torch.cumsum",)
    assert g.of_kind(OpKind.UNKNOWN)[0].inputs  # it stays connected, so propagation can pass through it


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_grouped_conv_fans_are_the_true_ones(groups):
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=groups)
    op = _graph(conv, torch.randn(2, 16, 8, 8)).of_kind(OpKind.CONV)[0]
    assert op.params.groups == groups
    assert op.weight.fan_in == 16 / groups * 9
    assert op.weight.fan_out == 32 / groups * 9 / 4  # each input feeds out/groups * k^2 / s^2 outputs
    assert (op.weight.torch_fan_in, op.weight.torch_fan_out) == (16 // groups * 9, 32 * 9)  # torch's, wrong


def test_depthwise_conv_is_marked():
    op = _graph(nn.Conv2d(8, 8, 3, groups=8), torch.randn(1, 8, 6, 6)).of_kind(OpKind.CONV)[0]
    assert op.params.depthwise and op.weight.fan_in == 9 and op.weight.fan_out == 9


def test_transposed_conv_fans_average_over_phases():
    op = _graph(nn.ConvTranspose2d(8, 4, 3, stride=2), torch.randn(1, 8, 5, 5)).of_kind(OpKind.CONV)[0]
    assert op.params.transposed and op.params.stride == (2, 2)
    assert op.weight.fan_in == pytest.approx(8 * 9 / 4)
    assert op.weight.fan_out == 4 * 9
    assert (op.weight.torch_fan_in, op.weight.torch_fan_out) == (4 * 9, 8 * 9)  # torch swaps them


def test_recurrent_layer_records_its_radius_and_sequence():
    torch.manual_seed(0)
    rnn = nn.RNN(16, 32, batch_first=True)
    op = _graph(rnn, torch.randn(2, 7, 16)).of_kind(OpKind.RECURRENT)[0]
    expected = torch.linalg.eigvals(rnn.weight_hh_l0.detach().double()).abs().max().item()
    assert op.params.seq_len == 7
    assert op.params.spectral_radius == pytest.approx((expected,))


def test_attention_via_export_records_head_dim_and_scale():
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(2, 5, 32)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    g = _graph(Wrap(), x)
    att = g.of_kind(OpKind.ATTENTION)[0]
    assert att.params.head_dim == 8 and att.params.seq_len == 5
    assert att.params.effective_scale == pytest.approx(1 / math.sqrt(8))
    packed = g.of_kind(OpKind.LINEAR)[0]
    assert packed.weight.shape == (96, 32) and packed.module == "mha"


def test_pinned_capture_rung_is_used():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    for rung in ("fx", "export", "hooks"):
        g = capture(from_instance(model, (torch.randn(2, 4),)), force=rung)
        assert g.capture.value == rung
        assert [op.kind for op in g.of_kind(OpKind.LINEAR, OpKind.ACTIVATION)] == [OpKind.LINEAR, OpKind.ACTIVATION]


def test_graph_is_read_only():
    g = _graph(nn.Linear(4, 4), torch.randn(1, 4))
    with pytest.raises(Exception):
        g.dag.add_edge("a", "b")
    with pytest.raises(TypeError):
        g.ops["x"] = None  # type: ignore[index]


def test_failed_export_prints_nothing(capfd):
    """torch.export dumps whole graphs when it gives up; the notes say why instead."""
    g = _graph(cm.DataDependent(), torch.randn(2, 4))
    out, err = capfd.readouterr()
    assert g.capture is Capture.HOOKS and "GuardOnDataDependentSymNode" in g.notes[1]
    assert out == "" and err == ""


def test_library_models_point_nowhere_rather_than_at_initlint_or_its_caller():
    """nn.Sequential's forward is torch's: no user line behind its ops (not the CLI script that called us)."""
    g = _graph(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.randn(2, 4))
    assert [op.location for op in g.of_kind(OpKind.LINEAR, OpKind.ACTIVATION)] == [None, None]


def test_bundled_examples_are_user_code():
    from initlint.load import load as load_target

    g = capture(load_target("initlint.examples:HandDropoutMLP"))
    mul = g.of_kind(OpKind.MUL)[0]
    assert mul.location.file.endswith(os.path.join("initlint", "examples", "__init__.py"))
    assert mul.location.function == "forward"


def test_tensor_attributes_and_unsupported_functions_keep_the_graph_connected():
    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(torch.fft.fft(x).real)

    g = _graph(Spectral(), torch.randn(2, 8))
    assert [(op.kind, op.inputs) for op in g][1:4] == [
        (OpKind.UNKNOWN, ("x",)), (OpKind.PASSTHROUGH, ("fft_fft",)), (OpKind.LINEAR, ("getattr_1",))]
    assert g.unknown == ("torch.fft_fft",)


class _RunsOnlyUntraced(nn.Module):
    """Traces into a graph that fails on the example inputs, while the model's own forward runs."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        if isinstance(x, torch.fx.Proxy):  # symbolic tracing only
            x = x.reshape(-1, 7)  # 2 x 8 elements: fails when the traced graph runs
        return self.fc(x)


def test_a_traced_graph_that_does_not_run_falls_back_to_export_with_a_note():
    g = _graph(_RunsOnlyUntraced(), torch.randn(2, 8))
    assert g.capture is Capture.EXPORT
    assert any(n.startswith("the traced graph did not run (RuntimeError: shape '[-1, 7]'") for n in g.notes), g.notes


def test_shape_pass_records_every_node_as_shape_prop_does():
    from torch.fx.passes.shape_prop import ShapeProp

    from initlint.capture import fx as fx_mod

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(2, 3, 8, 8)
    graph, values = fx_mod.trace(model, from_instance(model, (x,)).inputs)
    fx_mod.propagate_shapes(model, graph, values)
    ShapeProp(fx_mod.graph_module(model, graph)).propagate(x)
    for node in graph.nodes:
        meta = node.meta["tensor_meta"]
        assert node.meta["initlint_shape"] == (tuple(meta.shape), str(meta.dtype).removeprefix("torch.")), node


@pytest.mark.parametrize("tensor", [
    torch.ones(64), torch.zeros(5), -torch.zeros(3), torch.full((7,), 3.0), torch.full((9,), -2.0),
    torch.full((4,), 0.1),
    torch.full((6,), 2.0**60), torch.ones(3).half(), torch.ones(10, dtype=torch.float64), torch.randn(4, 3),
    torch.randn(3, 4).t(), torch.ones(1, 5).expand(4, 5), torch.arange(6), torch.full((3,), float("inf")),
])
def test_weight_statistics_equal_the_two_float64_passes(tensor):
    """Constant whole-number tensors (a norm's ones and zeros) are read off their extremes, the rest by two
    float64 passes: both give what the passes give."""
    from initlint.capture.normalize import _rms
    from initlint.ops import WeightStats

    before = tensor.clone()
    stats = WeightStats.of("w", tensor, 1, 1)
    f = tensor.reshape(-1).double()
    m = f.mean()
    c = f - m
    var = max(torch.dot(c, c).item() / f.numel(), 0.0)
    expected = (m.item(), math.sqrt(var), math.sqrt(var + m.item() ** 2), f.min().item() == f.max().item())
    assert repr((stats.mean, stats.std, stats.rms, stats.constant)) == repr(expected)
    if tensor.is_floating_point():
        assert repr(_rms(tensor, stats)) == repr(_rms(tensor))
    assert torch.equal(tensor, before)


class _Unpacks(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.rnn(x)  # LINE_UNPACK_RNN
        b, t, c = out.shape
        return self.fc(out.reshape(b * t, c))


def test_unpacked_proxies_become_items_with_the_users_line():
    g = _graph(_Unpacks(), torch.randn(2, 5, 4))
    assert g.capture is Capture.FX
    item = next(op for op in g if op.inputs == ("rnn",))
    with open(__file__) as fh:
        line = next(i for i, text in enumerate(fh, 1) if "LINE_UNPACK_RNN" in text and "next(" not in text)
    assert item.location is not None and item.location.line == line
    assert next(op for op in g if op.kind is OpKind.LINEAR).shape == (10, 3)
