"""The healthy zoo: the architecture replicas and ``transformers`` models of ``tests/real_models.py``, the
accuracy benchmark's architectures that follow their papers' init, and the bundled examples, each with what is
known to be true about it.

Known true findings, reported at warning level and required: ``nn.TransformerEncoder`` deep-copies its layer
(IL107, measured in the rule's docs). Known findings a normalization makes ``info``, by the rules' own
documentation, are left unscored: Post-LN at depth 2 to 4 (IL204 is a warning from 6 layers) and torchvision's
fan-out init on MobileNetV2's depthwise convs followed by BatchNorm (IL102).
"""

from __future__ import annotations

import os
import sys

from . import healthy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests"))

import real_models as R  # noqa: E402


def _example(name: str):
    def build():
        from initlint import examples

        model = getattr(examples, name)()
        return model, model.example_inputs() if hasattr(model, "example_inputs") else None  # None: inferred

    return build


def _suite(name: str):
    def build():
        from benchmarks.suite import SUITE

        return SUITE[name]()

    return build


POST_LN = {"IL204"}  # info below 6 layers

CASES = [
    # replicas, fx-captured: fast
    healthy("resnet", R.resnet, fast=True),
    healthy("mobilenet", R.mobilenet, may={"IL102"}, fast=True),
    healthy("mobilenet-fan-in", lambda: R.mobilenet(init="fan_in")),
    healthy("unet", R.unet, fast=True),
    healthy("dcgan", R.dcgan, fast=True),
    healthy("lstm", R.lstm, fast=True),
    # PyTorch's transformer modules, captured by torch.export
    healthy("pre-ln-transformer", R.pre_ln_transformer),
    healthy("post-ln-encoder", lambda: R.transformer_encoder(False), must={"IL107"}, may=POST_LN),
    healthy("pre-ln-encoder", lambda: R.transformer_encoder(True), must={"IL107"}),
    # transformers models from configs
    healthy("bert", R.bert, may=POST_LN),
    healthy("distilbert", R.distilbert, may=POST_LN),
    healthy("gpt2", R.gpt2),
    healthy("llama", R.llama),
    healthy("t5-encoder", R.t5_encoder),
    healthy("vit", R.vit),
    # the accuracy benchmark's architectures with their papers' init
    healthy("suite-resnet-bn", _suite("resnet-bn")),
    healthy("suite-mlp-relu-16-kaiming", _suite("mlp-relu-16-kaiming")),
    healthy("suite-mlp-tanh-16-xavier", _suite("mlp-tanh-16-xavier")),
    healthy("suite-dcgan", _suite("dcgan")),
    # the bundled healthy examples
    healthy("example-scaled-residual-mlp", _example("ScaledResidualMLP")),
    healthy("example-pre-ln-encoder", _example("PreLNEncoder")),
    healthy("example-small-resnet", _example("SmallResNet")),
    healthy("example-generator", _example("Generator")),
]
