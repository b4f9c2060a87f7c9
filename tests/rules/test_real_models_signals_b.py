"""IL101, IL104, IL301, IL302 and IL303 on the real architectures: exactly these findings, no others.

The healthy models (and the ones whose defects belong to other rules: Post-LN, depthwise fans, cloned layers,
checkerboard) get none of these five; two real architectures with a scale defect put in get exactly the
findings the theory says. A finding that appears or disappears here is a change in precision or recall.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from torch import nn

from initlint import lint

from .. import real_models

CODES = ["IL101", "IL104", "IL301", "IL302", "IL303"]
# The hot ResNet head: sqrt(64 fan-in x E[w^2] = 1 x pooled features' second moment 0.73) = 6.8, within the
# 640 weights' sample spread (6% in variance).
LOGIT_STD_TOL = 0.05


def _hot_resnet():
    """torchvision-style ResNet whose classifier is drawn from N(0, 1): logit std 6.8 over 10 classes."""
    model, inputs = real_models.resnet()
    nn.init.normal_(model.fc.weight, std=1.0)
    return model, inputs


def _gpt2_lm_unit_init():
    """GPT-2 with a language-model head and `initializer_range=1.0` instead of 0.02 (a misread config)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(real_models.SEED)
    cfg = GPT2Config(vocab_size=real_models.VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=0, eos_token_id=0, initializer_range=1.0)
    return GPT2LMHeadModel(cfg), {"input_ids": real_models._ids(), "use_cache": False}


BUILDERS = {
    **real_models.ALL,
    "mobilenet_fan_in": lambda: real_models.mobilenet(init="fan_in"),
    "dcgan_kernel_3": lambda: real_models.dcgan(kernel=3),
    "resnet_hot_fc": _hot_resnet,
    "gpt2_lm_unit_init": _gpt2_lm_unit_init,
}

# (code, severity, module) of every finding of the five rules, per model.
EXPECTED: dict[str, list[tuple[str, str, str]]] = {name: [] for name in BUILDERS}
EXPECTED["resnet_hot_fc"] = [("IL104", "warning", "fc")]
EXPECTED["gpt2_lm_unit_init"] = [
    # the tied head reads LayerNorm'd features through N(0, 1) embeddings: logit std 8 over 128 tokens
    ("IL104", "warning", "lm_head"),
    # 64x (16x for the 1/sqrt(2L)-scaled projections) above the band, in branches that outgrow the stream;
    # in the second block the stream has grown and its attention branch stays below it
    ("IL101", "warning", "transformer.h.0.attn.c_attn"),
    ("IL101", "warning", "transformer.h.0.attn.c_proj"),
    ("IL101", "warning", "transformer.h.0.mlp.c_fc"),
    ("IL101", "warning", "transformer.h.0.mlp.c_proj"),
    ("IL101", "warning", "transformer.h.1.mlp.c_fc"),
]


@lru_cache(maxsize=None)
def _findings(name: str) -> tuple:
    model, inputs = BUILDERS[name]()
    report = lint(model, inputs, select=CODES)
    assert report.targets[0].error is None, report.targets[0].error
    return tuple(report.findings)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_exact_findings(name):
    got = sorted((f.code, f.severity.value, f.module) for f in _findings(name))
    assert got == sorted(EXPECTED[name]), [f.message for f in _findings(name)]


@pytest.mark.parametrize("name", ["bert", "distilbert", "dcgan", "gpt2", "llama", "lstm", "mobilenet",
                                  "mobilenet_fan_in", "pre_ln_encoder", "pre_ln_transformer", "resnet",
                                  "t5_encoder", "unet", "vit"])
def test_healthy_models_get_no_warning_or_error(name):
    assert [f.message for f in _findings(name) if f.severity.value != "info"] == []


def test_the_hot_resnet_head_is_what_the_docs_say():
    (f,) = _findings("resnet_hot_fc")
    assert f.predicted["classes"] == 10
    assert f.predicted["logit_std"] == pytest.approx(6.8, rel=LOGIT_STD_TOL)
    assert f.predicted["excess_nats"] > 5
