"""Targets and example inputs: every way a user names a model and every source of inputs."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from initlint.errors import TargetError
from initlint.inputs import ExampleInputs, infer, transformers_inputs
from initlint.load import load, parse_target

SOURCE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width=4, act="relu"):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = act

    def forward(self, x):
        return self.fc(x)

class WithInputs(Net):
    def example_inputs(self):
        return torch.ones(3, self.fc.in_features)

def factory(width=6):
    return Net(width), torch.zeros(5, width)

def plain_factory():
    return Net(8)

instance = Net(10)
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "models.py").write_text(textwrap.dedent(SOURCE))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(SOURCE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_parse_target_forms():
    assert parse_target("a.b:C").module == "a.b"
    spec = parse_target("dir/m.py:Net(depth=3, scale=0.5, name='x', dims=(1, 2))")
    assert (spec.module, spec.attr, spec.is_path) == ("dir/m.py", "Net", True)
    assert spec.kwargs == {"depth": 3, "scale": 0.5, "name": "x", "dims": (1, 2)}
    with pytest.raises(TargetError, match="only keyword arguments"):
        parse_target("m.py:Net(3)")
    with pytest.raises(TargetError, match="literal"):
        parse_target("m.py:Net(depth=compute())")


def test_class_with_keyword_arguments(project):
    t = load("models.py:Net(width=7)")
    assert t.model.fc.in_features == 7 and t.inputs.source == "inferred"
    assert tuple(t.inputs.args[0].shape) == (2, 7)


def test_dotted_module_path(project):
    t = load("pkg.nets:Net")
    assert isinstance(t.model, nn.Module) and t.name == "Net"


def test_factory_returning_model_and_inputs(project):
    t = load("models.py:factory(width=3)")
    assert t.inputs.source == "given" and tuple(t.inputs.args[0].shape) == (5, 3)


def test_factory_returning_model(project):
    assert load("models.py:plain_factory").model.fc.in_features == 8


def test_instance(project):
    assert load("models.py:instance").model.fc.in_features == 10


def test_model_example_inputs_method(project):
    t = load("models.py:WithInputs")
    assert t.inputs.source == "model" and tuple(t.inputs.args[0].shape) == (3, 4)


def test_input_shape_and_dtype_override_the_model(project):
    t = load("models.py:WithInputs", input_shapes=[(9, 4)], input_dtype=["float64"])
    assert t.inputs.source == "shapes"
    assert tuple(t.inputs.args[0].shape) == (9, 4) and t.inputs.args[0].dtype == torch.float64


def test_factory_inputs_win_over_shapes(project):
    assert load("models.py:factory", input_shapes=[(1, 6)]).inputs.source == "given"


def test_construction_sites_point_at_the_assignment(project):
    t = load("models.py:Net")
    loc = t.sites[id(t.model.fc)]
    assert loc.file == "models.py" and loc.line == 8 and loc.function == "__init__"


def test_building_does_not_touch_the_global_rng(project):
    state = torch.get_rng_state()
    load("models.py:Net")
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("module,shape,dtype", [
    (nn.Sequential(nn.Conv2d(3, 8, 3)), (2, 3, 32, 32), torch.float32),
    (nn.Sequential(nn.Conv1d(4, 8, 3)), (2, 4, 64), torch.float32),
    (nn.Sequential(nn.ConvTranspose2d(16, 8, 4)), (2, 16, 1, 1), torch.float32),
    (nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 2)), (2, 16), torch.int64),
    (nn.Sequential(nn.Linear(12, 2)), (2, 12), torch.float32),
    (nn.LSTM(5, 7, batch_first=True), (2, 16, 5), torch.float32),
    (nn.LSTM(5, 7), (16, 2, 5), torch.float32),
])
def test_inferred_inputs(module, shape, dtype):
    ex = infer(module)
    assert tuple(ex.args[0].shape) == shape and ex.args[0].dtype == dtype
    if dtype == torch.int64:
        assert int(ex.args[0].max()) < 50


def test_transformers_models_get_dummy_inputs_without_cache():
    from transformers import GPT2Config, GPT2Model, ViTConfig, ViTModel

    gpt2 = GPT2Model(GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2, n_positions=8))
    ex = transformers_inputs(gpt2)
    assert ex.kwargs["use_cache"] is False
    assert tuple(ex.kwargs["input_ids"].shape) == (2, 8) and int(ex.kwargs["input_ids"].max()) < 50
    vit = ViTModel(ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=64))
    assert tuple(transformers_inputs(vit).kwargs["pixel_values"].shape) == (2, 3, 16, 16)


def test_lint_a_transformers_model_with_no_inputs_given():
    from transformers import LlamaConfig, LlamaModel

    from initlint import lint

    model = LlamaModel(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32))
    t = lint(model, select=[]).targets[0]
    assert t.error is None and t.capture == "export" and t.ops > 20


def test_example_inputs_describe():
    ex = ExampleInputs((torch.zeros(2, 3),), {"mask": torch.ones(2, dtype=torch.bool)})
    assert ex.describe() == "(2, 3) float32, mask=(2,) bool"


def test_a_model_on_the_meta_device_is_linted_structurally():
    """Billions of parameters cost nothing on `meta`: inputs follow the model there, stats are unknown (NaN)."""
    from initlint import lint
    from initlint.ops import OpKind

    with torch.device("meta"):
        model = nn.Sequential(nn.Embedding(32000, 4096), nn.Linear(4096, 16384), nn.GELU(), nn.Linear(16384, 4096))
    t = lint(model, select=[]).targets[0]
    assert t.error is None and t.capture == "fx"
    linear = t.graph.of_kind(OpKind.LINEAR)[0]
    assert linear.shape == (2, 16, 16384) and linear.weight.fan_in == 4096
    assert linear.weight.std != linear.weight.std  # NaN: no values on meta


def test_on_the_meta_device_only_structural_rules_run_and_the_rest_are_listed():
    from initlint import lint
    from initlint.rules import BUILTIN_RULES

    with torch.device("meta"):
        layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, norm_first=False)
        model = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)
    t = lint(model).targets[0]
    structural = {"IL103", "IL204", "IL206"}  # no rule reading weight values can speak without them
    assert t.error is None
    assert set(t.skipped) == {r.code for r in BUILTIN_RULES} - structural
    assert [f.code for f in t.findings] == ["IL204"]  # Post-LN is structure: still found
    assert t.to_dict()["skipped"] == list(t.skipped)
