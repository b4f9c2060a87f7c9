"""Generated architectures for the fuzz benchmark: printable specs, a hypothesis strategy, and the builder.

A model is a plain, printable :class:`Spec` (a family and a tuple of blocks), built by :func:`build`. Two
families: sequences of features ``(batch, tokens, width)`` and images ``(batch, channels, h, w)``. Blocks: weight
layers with every supported activation, norms (LayerNorm, RMSNorm as module and by hand, BatchNorm, GroupNorm,
InstanceNorm, channel LayerNorm), residual blocks (scaled, ReZero, Pre-LN), parallel branches summed with ``+``
or ``torch.stack(...).sum(0)``, concatenations, attention by hand, with ``F.scaled_dot_product_attention`` and
``nn.MultiheadAttention``, grouped, depthwise and transposed convs, dropout as module and functional; every
weight drawn by one of nine inits at a random scale.

>>> model, x = build(Spec("seq", 16, (("linear", ("xavier_normal", 1.0), "gelu", True), ("norm", "rms_hand"))))
>>> tuple(model(x).shape)
(4, 8, 64)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

BATCH, TOKENS, HW = 4, 8, 8

ACTS = ("relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "celu", "selu", "gelu", "silu", "mish", "softplus",
        "tanh", "sigmoid", "hardtanh", "hardsigmoid", "hardswish", "softsign", "tanhshrink", "logsigmoid", "identity")
INITS = ("default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "orthogonal", "normal",
         "trunc_normal", "zeros")
SEQ_NORMS = ("layer", "rms", "rms_hand", "batch")
IMG_NORMS = ("batch2d", "group", "instance", "layer_channels")


@dataclass(frozen=True)
class Spec:
    """A generated model: ``family`` "seq" or "img", the width, and the blocks in order."""

    family: str
    width: int
    blocks: tuple[tuple, ...]
    seed: int = 0

    def __repr__(self) -> str:
        inner = ",\n    ".join(repr(b) for b in self.blocks)
        return f"Spec({self.family!r}, {self.width}, (\n    {inner},\n), seed={self.seed})"


# -- strategies ----------------------------------------------------------------------------------------------------

weights = st.tuples(st.sampled_from(INITS), st.sampled_from((0.1, 0.5, 1.0, 2.0, 4.0)))  # (init, scale)
acts = st.sampled_from(ACTS)


def seq_block() -> st.SearchStrategy:
    return st.one_of(
        st.tuples(st.just("linear"), weights, acts, st.booleans()),
        st.tuples(st.just("norm"), st.sampled_from(SEQ_NORMS)),
        st.tuples(st.just("act"), acts),
        st.tuples(st.just("residual"), weights, weights, acts, st.sampled_from((1.0, 0.5 ** 0.5, "rezero")),
                  st.sampled_from((None, "layer", "rms_hand"))),
        st.tuples(st.just("parallel"), st.integers(2, 3), weights, acts, st.booleans(),
                  st.sampled_from(("plus", "stack"))),
        st.tuples(st.just("concat"), weights, weights, acts),
        st.tuples(st.just("attention"), st.sampled_from(("hand", "sdpa", "mha")), st.sampled_from((1, 2, 4)),
                  st.sampled_from((None, 1.0)), weights, st.booleans()),
        st.tuples(st.just("dropout"), st.sampled_from((0.1, 0.5)), st.sampled_from(("module", "functional"))),
    )


def img_block() -> st.SearchStrategy:
    return st.one_of(
        st.tuples(st.just("conv"), st.sampled_from((1, 3)), st.sampled_from(("1", "2", "depthwise")), weights, acts),
        st.tuples(st.just("tconv"), st.sampled_from((2, 3, 4)), st.sampled_from((1, 2)), weights, acts),
        st.tuples(st.just("norm"), st.sampled_from(IMG_NORMS)),
        st.tuples(st.just("act"), acts),
        st.tuples(st.just("residual"), st.sampled_from(("1", "depthwise")), weights, weights, acts,
                  st.sampled_from((1.0, 0.5 ** 0.5, "rezero"))),
        st.tuples(st.just("parallel"), st.integers(2, 3), weights, acts, st.booleans(),
                  st.sampled_from(("plus", "stack"))),
        st.tuples(st.just("concat"), weights, weights, acts),
        st.tuples(st.just("dropout"), st.sampled_from((0.1, 0.5)), st.sampled_from(("module", "dropout2d"))),
    )


@st.composite
def specs(draw, max_blocks: int = 6) -> Spec:
    family = draw(st.sampled_from(("seq", "img")))
    width = draw(st.sampled_from((16, 32)))
    block = seq_block() if family == "seq" else img_block()
    blocks = draw(st.lists(block, min_size=1, max_size=max_blocks))
    return Spec(family, width, tuple(blocks), draw(st.integers(0, 2**16)))


# -- building ------------------------------------------------------------------------------------------------------


def act(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU, "rrelu": nn.RReLU,
            "elu": nn.ELU, "celu": nn.CELU, "selu": nn.SELU, "gelu": nn.GELU, "silu": nn.SiLU, "mish": nn.Mish,
            "softplus": nn.Softplus, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "hardtanh": nn.Hardtanh,
            "hardsigmoid": nn.Hardsigmoid, "hardswish": nn.Hardswish, "softsign": nn.Softsign,
            "tanhshrink": nn.Tanhshrink, "logsigmoid": nn.LogSigmoid, "identity": nn.Identity}[name]()


def init_(w: torch.Tensor, how: tuple[str, float]) -> None:
    name, scale = how
    with torch.no_grad():
        if name == "kaiming_normal":
            nn.init.kaiming_normal_(w, nonlinearity="relu")
        elif name == "kaiming_uniform":
            nn.init.kaiming_uniform_(w, nonlinearity="relu")
        elif name == "xavier_normal":
            nn.init.xavier_normal_(w)
        elif name == "xavier_uniform":
            nn.init.xavier_uniform_(w)
        elif name == "orthogonal":
            nn.init.orthogonal_(w)
        elif name == "normal":
            nn.init.normal_(w, std=0.02)
        elif name == "trunc_normal":
            nn.init.trunc_normal_(w, std=0.02)
        elif name == "zeros":
            nn.init.zeros_(w)
        w.mul_(scale)


class RMSNormHand(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an image, as ConvNeXt writes it: permute, normalize, permute back."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class BatchNormSeq(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(d)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def norm(kind: str, d: int) -> nn.Module:
    return {"layer": lambda: nn.LayerNorm(d), "rms": lambda: nn.RMSNorm(d), "rms_hand": lambda: RMSNormHand(d),
            "batch": lambda: BatchNormSeq(d), "batch2d": lambda: nn.BatchNorm2d(d), "group": lambda: nn.GroupNorm(4, d),
            "instance": lambda: nn.InstanceNorm2d(d, affine=True), "layer_channels": lambda: ChannelLayerNorm(d)}[kind]()


def layer(family: str, d: int, how, kind: str = "1", k: int = 3) -> nn.Module:
    if family == "seq":
        m = nn.Linear(d, d)
    else:
        m = nn.Conv2d(d, d, k, padding=k // 2, groups={"1": 1, "2": 2, "depthwise": d}[kind])
    init_(m.weight, how)
    return m


class Attention(nn.Module):
    def __init__(self, impl: str, d: int, heads: int, scale, how, causal: bool):
        super().__init__()
        self.impl, self.heads, self.scale, self.causal = impl, heads, scale, causal
        if impl == "mha":
            self.mha = nn.MultiheadAttention(d, heads, batch_first=True)
            init_(self.mha.in_proj_weight, how)
        else:
            self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
            init_(self.qkv.weight, how)

    def forward(self, x):
        if self.impl == "mha":
            mask = torch.triu(torch.full((x.shape[1], x.shape[1]), float("-inf")), 1) if self.causal else None
            return self.mha(x, x, x, attn_mask=mask, need_weights=False)[0]
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scale)
        else:
            s = (q @ k.transpose(-2, -1)) * (self.scale if self.scale is not None else (d // self.heads) ** -0.5)
            if self.causal:
                s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            y = s.softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """One generated block; ``forward`` branches on the spec at trace time, so every model traces."""

    def __init__(self, family: str, d: int, spec: tuple):
        super().__init__()
        self.kind, self.spec, self.family = spec[0], spec, family
        kind = self.kind
        if kind == "linear":
            _, how, a, bias = spec
            self.f = nn.Sequential(layer(family, d, how), act(a))
            if not bias:
                self.f[0].bias = None
        elif kind == "conv":
            _, k, groups, how, a = spec
            self.f = nn.Sequential(layer(family, d, how, groups, k), act(a))
        elif kind == "tconv":
            _, k, stride, how, a = spec
            pad, out_pad = (k - stride + 1) // 2, (k - stride) % 2 if stride > 1 else 0
            t = nn.ConvTranspose2d(d, d, k, stride, padding=pad, output_padding=out_pad)
            init_(t.weight, how)
            self.f = nn.Sequential(t, act(a), *([nn.AvgPool2d(stride)] if stride > 1 else []))
        elif kind == "norm":
            self.f = norm(spec[1], d)
        elif kind == "act":
            self.f = act(spec[1])
        elif kind == "residual":
            if family == "seq":
                _, how1, how2, a, scale, pre = spec
                self.pre = norm(pre, d) if pre else nn.Identity()
                self.f = nn.Sequential(layer(family, d, how1), act(a), layer(family, d, how2))
            else:
                _, groups, how1, how2, a, scale = spec
                self.pre = nn.Identity()
                self.f = nn.Sequential(layer(family, d, how1, groups), act(a), layer(family, d, how2, "1", 1))
            self.alpha = nn.Parameter(torch.zeros(())) if scale == "rezero" else None
            self.scale = 1.0 if scale == "rezero" else scale
        elif kind == "parallel":
            _, n, how, a, scaled, form = spec
            self.paths = nn.ModuleList(nn.Sequential(layer(family, d, how, "1", 1 + 2 * i), act(a)) for i in range(n))
            self.scale, self.form = (n ** -0.5 if scaled else 1.0), form
        elif kind == "concat":
            _, how1, how2, a = spec
            self.a, self.b = layer(family, d, how1, "1", 1), nn.Sequential(layer(family, d, how2, "1", 1), act(a))
            self.merge = nn.Linear(2 * d, d) if family == "seq" else nn.Conv2d(2 * d, d, 1)
        elif kind == "attention":
            _, impl, heads, scale, how, causal = spec
            self.f = Attention(impl, d, heads, scale, how, causal)
        elif kind == "dropout":
            _, p, form = spec
            self.p, self.form = p, form
            self.f = nn.Dropout2d(p) if form == "dropout2d" else nn.Dropout(p)

    def forward(self, x):
        kind = self.kind
        if kind == "residual":
            branch = self.f(self.pre(x))
            if self.alpha is not None:
                branch = self.alpha * branch
            return (x + branch) * self.scale
        if kind == "parallel":
            ys = [p(x) for p in self.paths]
            total = torch.stack(ys).sum(0) if self.form == "stack" else sum(ys[1:], ys[0])
            return total * self.scale
        if kind == "concat":
            return self.merge(torch.cat([self.a(x), self.b(x)], dim=-1 if self.family == "seq" else 1))
        if kind == "dropout" and self.form == "functional":
            return F.dropout(x, self.p, self.training)
        return self.f(x)


class Generated(nn.Module):
    def __init__(self, spec: Spec):
        super().__init__()
        self.blocks = nn.ModuleList(Block(spec.family, spec.width, b) for b in spec.blocks)
        self.head = nn.Linear(spec.width, 64)  # 64 outputs: a measured second moment over more than a few units
        self.family = spec.family

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        if self.family == "img":
            x = x.mean((2, 3))
        return self.head(x)


def build(spec: Spec) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(spec.seed)
    model = Generated(spec)
    shape = (BATCH, TOKENS, spec.width) if spec.family == "seq" else (BATCH, spec.width, HW, HW)
    return model, torch.randn(shape, generator=torch.Generator().manual_seed(spec.seed))
