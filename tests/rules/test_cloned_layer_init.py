"""IL107 cloned-layer-init: blocks deep-copied from one initialized layer."""

from __future__ import annotations

import functools

import torch
from torch import nn

from initlint import lint
from initlint.findings import Severity


def encoder(layers=4, norm_first=True, seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False), torch.randn(2, 8, 32)


def reinit(block):
    for m in block.modules():
        if isinstance(m, nn.MultiheadAttention):
            m._reset_parameters()
        elif m is not block and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def findings(model, inputs):
    report = lint(model, inputs, select=["IL107"])
    assert report.targets[0].error is None
    return report.findings


@functools.cache
def encoder_finding():
    """One lint of the 4-layer encoder (torch.export takes a second or two), shared by the tests below."""
    model, x = encoder()
    (f,) = findings(model, x)
    return f


def test_transformer_encoder_copies_its_layer():
    f = encoder_finding()
    assert f.severity is Severity.WARNING
    assert f.module == "layers.0.self_attn"
    assert f.message == (
        "`layers.0` to `layers.3` start from identical weights: all 4 random weight tensors (`linear1.weight`, "
        "`linear2.weight`, `self_attn.in_proj_weight`, `self_attn.out_proj.weight`) are equal across the 4 blocks, "
        "copies of one initialized layer whose contributions to the residual stream are correlated"
    )
    assert f.predicted == {"blocks": 4, "identical_tensors": 4, "tensors": 4}


def test_the_fix_reinitializes_every_copy():
    model, x = encoder()
    exec(encoder_finding().fix.code, {"nn": nn, "model": model})
    assert not torch.equal(model.layers[0].linear1.weight, model.layers[1].linear1.weight)
    assert findings(model, x) == []


def test_clones_make_the_pre_ln_stream_grow_faster():
    """The consequence, at the size of this test (the docs quote 56-70 against 3.5 at 24 layers, d = 256)."""

    def stream_variance(model, x):
        with torch.no_grad():
            for layer in model.layers:
                x = layer(x)
        return x.var().item()

    cloned, x = encoder(layers=12)
    independent, _ = encoder(layers=12)
    for block in independent.layers:
        reinit(block)
    x = torch.randn(8, 32, 32)
    assert stream_variance(cloned, x) > 2 * stream_variance(independent, x)


def test_a_partial_reinit_is_reported_with_what_is_still_shared():
    model, x = encoder(layers=2, norm_first=False)
    for block in model.layers:
        block.linear1.reset_parameters()
    (f,) = findings(model, x)
    assert f.predicted == {"blocks": 2, "identical_tensors": 3, "tensors": 4}
    assert "3 of 4 random weight tensors" in f.message


def test_some_blocks_cloned_some_not():
    model, x = encoder(layers=3)
    reinit(model.layers[0])
    (f,) = findings(model, x)
    assert f.message.startswith("`layers.1` and `layers.2` start from identical weights")
    assert 'for i in (1, 2):\n    block = model.get_submodule(f"layers.{i}")' in f.fix.code
    first = model.layers[0].linear1.weight.clone()
    exec(f.fix.code, {"nn": nn, "model": model})
    assert torch.equal(model.layers[0].linear1.weight, first)  # the independent block is left alone
    assert not torch.equal(model.layers[1].linear1.weight, model.layers[2].linear1.weight)


def test_independent_blocks_and_tied_weights_are_clean():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.fc = nn.LayerNorm(16), nn.Linear(16, 16)

        def forward(self, x):
            return x + self.fc(self.ln(x))

    class Stack(nn.Module):
        def __init__(self, tie=False):
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(3))
            if tie:  # one weight used by every block on purpose (ALBERT-style sharing)
                for b in self.blocks[1:]:
                    b.fc.weight = self.blocks[0].fc.weight

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    torch.manual_seed(0)
    x = torch.randn(2, 16)
    assert findings(Stack(), x) == []
    assert findings(Stack(tie=True), x) == []


class ConvBNReLU(nn.Module):
    def __init__(self, residual: bool, c: int = 16):
        super().__init__()
        self.conv, self.bn, self.residual = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), residual

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return x + y if self.residual else y


class Stack(nn.Module):
    def __init__(self, residual: bool):
        super().__init__()
        self.body = nn.Sequential(*[ConvBNReLU(residual) for _ in range(4)])
        for b in self.body[1:]:
            b.load_state_dict(self.body[0].state_dict())

    def forward(self, x):
        return self.body(x)


def state_copied(residual: bool):
    torch.manual_seed(0)
    return Stack(residual), torch.randn(2, 16, 16, 16)


def test_copies_loaded_with_load_state_dict_into_a_residual_stream_are_a_warning():
    (f,) = findings(*state_copied(residual=True))
    assert f.severity is Severity.WARNING and "contributions to the residual stream are correlated" in f.message


def test_near_miss_copies_in_a_plain_stack_are_only_info():
    """No residual stream for the copies to correlate in: their outputs measured no more alike than
    independent blocks' (the rule's docs), so the copy is noted, not warned about."""
    (f,) = findings(*state_copied(residual=False))
    assert f.severity is Severity.INFO and "no residual add" in f.message
    model, x = state_copied(residual=False)
    for b in model.body:
        reinit(b)
    assert findings(model, x) == []
