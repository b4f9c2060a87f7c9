"""Precision on real architectures: the exact findings of the structural rules on each real model.

IL102, IL103, IL105, IL106, IL107, IL204 and IL206 need only the graph and the weights. Healthy models (ResNet,
U-Net, DCGAN with kernel 4, ViT, GPT-2, Llama, T5, a Pre-LN transformer with independent layers) must get
nothing at warning or error level; the defective ones get what the theory says.
"""

from __future__ import annotations

import functools

import pytest

from initlint import lint
from initlint.findings import Severity

from .. import real_models as R

STRUCTURAL = ["IL102", "IL103", "IL105", "IL106", "IL107", "IL204", "IL206"]

BUILDERS = {
    **R.ALL,
    "mobilenet_fan_in": lambda: R.mobilenet(init="fan_in"),
    "dcgan_kernel3": lambda: R.dcgan(kernel=3),
}

INFO, WARNING = Severity.INFO, Severity.WARNING

# (code, severity, module) of every finding, sorted.
EXPECTED = {
    "resnet": [],
    "unet": [],
    "dcgan": [],
    "lstm": [],
    "pre_ln_transformer": [],
    "gpt2": [],
    "llama": [],
    "t5_encoder": [],
    "vit": [],
    "mobilenet_fan_in": [],
    # torchvision's kaiming_normal_(mode="fan_out") on the depthwise convs, each followed by a BatchNorm
    "mobilenet": [("IL102", INFO, f"features.{i}.conv.3") for i in range(3, 8)],
    # kernel 3, stride 2: phase ratio 4 at every upsampling layer
    "dcgan_kernel3": [("IL103", WARNING, f"main.{i}") for i in (3, 6, 9)],
    # 4 layers of depth, under the 6 from which Post-LN is a warning
    "post_ln_encoder": [("IL107", WARNING, "layers.0.self_attn"), ("IL204", INFO, "layers.0.norm1")],
    "pre_ln_encoder": [("IL107", WARNING, "layers.0.self_attn")],
    "bert": [("IL204", INFO, "encoder.layer.0.attention.output.LayerNorm")],
    "distilbert": [("IL204", INFO, "transformer.layer.0.sa_layer_norm")],
}
HEALTHY = ("resnet", "unet", "dcgan", "vit", "gpt2", "llama", "t5_encoder", "pre_ln_transformer")


@functools.cache
def findings(name):
    model, inputs = BUILDERS[name]()
    report = lint(model, inputs, select=STRUCTURAL)
    assert report.targets[0].error is None, report.targets[0].error
    return report.findings


def test_every_real_model_is_pinned():
    assert set(EXPECTED) == set(BUILDERS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_findings(name):
    got = sorted((f.code, f.severity, f.module) for f in findings(name))
    assert got == sorted(EXPECTED[name])


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_models_get_nothing_at_warning_or_error(name):
    assert [f for f in findings(name) if f.severity.rank >= Severity.WARNING.rank] == []


def test_the_numbers_on_the_defective_models():
    factors = [f.predicted["factor"] for f in findings("mobilenet")]
    assert factors == [32.0, 96.0, 144.0, 144.0, 192.0]  # the group count: hidden = 32, 16*6, 24*6, 24*6, 32*6
    assert all(f.predicted["phase_variance_ratio"] == 4.0 for f in findings("dcgan_kernel3"))
    post = {name: next(f for f in findings(name) if f.code == "IL204").predicted for name in
            ("post_ln_encoder", "bert", "distilbert")}
    assert {name: (p["layers"], p["post_ln_adds"]) for name, p in post.items()} == {
        "post_ln_encoder": (4, 8), "bert": (2, 4), "distilbert": (2, 4)}
    cloned = next(f for f in findings("pre_ln_encoder") if f.code == "IL107")
    assert cloned.predicted == {"blocks": 4, "identical_tensors": 4, "tensors": 4}
