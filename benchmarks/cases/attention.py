"""Pairs for the transformer rules: IL204 post-ln and IL205 unscaled-attention-logits.

Attention is written three ways throughout: ``nn.MultiheadAttention`` (inside ``nn.TransformerEncoderLayer`` or
on its own), by hand (``softmax(q @ k.transpose(-2, -1) / sqrt(d)) @ v``) and with
``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from . import pair

D, HEADS, SEQ = 32, 4, 8


class HandAttention(nn.Module):
    """Multi-head attention by hand; ``scale`` None means ``1/sqrt(d_head)``."""

    def __init__(self, d: int = D, heads: int = HEADS, scale: float | None = None, init_gain: float = 1.0):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        for m in (self.q, self.k, self.v, self.o):
            nn.init.xavier_normal_(m.weight, gain=init_gain if m in (self.q, self.k) else 1.0)
            nn.init.zeros_(m.bias)
        self.heads = heads
        self.scale = 1 / math.sqrt(d // heads) if scale is None else scale

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (m(x).view(b, n, self.heads, d // self.heads).transpose(1, 2) for m in (self.q, self.k, self.v))
        att = (q @ k.transpose(-2, -1)) * self.scale
        y = att.softmax(dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, n, d))


class SDPAttention(nn.Module):
    """Packed projection and ``F.scaled_dot_product_attention``; ``scale`` None is its default."""

    def __init__(self, d: int = D, heads: int = HEADS, scale: float | None = None):
        super().__init__()
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        nn.init.xavier_normal_(self.qkv.weight)
        nn.init.xavier_normal_(self.o.weight)
        self.heads, self.scale = heads, scale

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.o(y.transpose(1, 2).reshape(b, n, d))


class RMSNorm(nn.Module):
    """Hand-written RMSNorm, as in Llama."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class Block(nn.Module):
    """One transformer block, Post-LN (``norm(x + f(x))``) or Pre-LN (``x + f(norm(x))``)."""

    def __init__(self, attn: nn.Module, norm: type, post: bool, d: int = D):
        super().__init__()
        self.attn, self.post = attn, post
        self.n1, self.n2 = norm(d), norm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        if self.post:
            x = self.n1(x + self.attn(x))
            return self.n2(x + self.mlp(x))
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


class Stack(nn.Module):
    def __init__(self, make_attn, norm: type = nn.LayerNorm, post: bool = False, depth: int = 6, d: int = D):
        super().__init__()
        self.blocks = nn.ModuleList(Block(make_attn(), norm, post, d) for _ in range(depth))
        self.final = nn.Identity() if post else norm(d)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.final(x)


def _x():
    return torch.randn(2, SEQ, D)


class Layers(nn.Module):
    """Independently initialized ``nn.TransformerEncoderLayer``s (no deep copies: IL107 stays out)."""

    def __init__(self, norm_first: bool, depth: int = 6):
        super().__init__()
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(D, HEADS, 2 * D, dropout=0.1, batch_first=True,
                                                               norm_first=norm_first) for _ in range(depth))
        self.norm = nn.LayerNorm(D) if norm_first else nn.Identity()

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


IL204 = [
    *pair("IL204", "encoder-layers", lambda: (Layers(False), _x()), lambda: (Layers(True), _x()), fast=False),
    *pair("IL204", "hand-attention", lambda: (Stack(HandAttention, post=True), _x()),
          lambda: (Stack(HandAttention, post=False), _x())),
    *pair("IL204", "sdpa-rmsnorm", lambda: (Stack(SDPAttention, norm=RMSNorm, post=True), _x()),
          lambda: (Stack(SDPAttention, norm=RMSNorm, post=False), _x())),
]

# -- IL205 unscaled-attention-logits ----------------------------------------------------------------------------


class SingleHead(nn.Module):
    """The textbook single head, d = 128 -> d_k = 64, 64 keys; the defect omits ``1/sqrt(d_k)``."""

    def __init__(self, scaled: bool, d: int = 128, d_k: int = 64):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d_k), nn.Linear(d, d_k), nn.Linear(d, d_k)
        for m in (self.q, self.k, self.v):
            nn.init.xavier_normal_(m.weight)
        self.scaled, self.d_k = scaled, d_k

    def forward(self, x):
        scores = torch.matmul(self.q(x), self.k(x).transpose(-2, -1))
        if self.scaled:
            scores = scores / math.sqrt(self.d_k)
        return F.softmax(scores, dim=-1) @ self.v(x)


class MHA(nn.Module):
    """``nn.MultiheadAttention`` whose packed projection is re-drawn 4x too large in the defect."""

    def __init__(self, gain: float, d: int = 64):
        super().__init__()
        self.mha = nn.MultiheadAttention(d, 4, batch_first=True)
        with torch.no_grad():
            self.mha.in_proj_weight.mul_(gain)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        h = self.norm(x)
        return x + self.mha(h, h, h, need_weights=False)[0]


IL205 = [
    # logit std about 10.6 over 64 keys
    *pair("IL205", "hand-single-head", lambda: (SingleHead(False), torch.randn(2, 64, 128)),
          lambda: (SingleHead(True), torch.randn(2, 64, 128))),
    # sdpa with scale=1 on 32-wide heads of Xavier q, k
    *pair("IL205", "sdpa-scale-1", lambda: (Stack(lambda: SDPAttention(D * 4, 2, scale=1.0), depth=2, d=D * 4),
                                            torch.randn(2, 32, D * 4)),
          lambda: (Stack(lambda: SDPAttention(D * 4, 2), depth=2, d=D * 4), torch.randn(2, 32, D * 4))),
    # packed in_proj 4x Xavier: q and k variance x16 each, logit std about 8
    *pair("IL205", "multihead-attention", lambda: (MHA(4.0), torch.randn(2, 32, 64)),
          lambda: (MHA(1.0), torch.randn(2, 32, 64)), may={"IL101"}),
    # hand-written multi-head, q and k projections drawn 3x too large in std
    *pair("IL205", "hand-large-init", lambda: (Stack(lambda: HandAttention(init_gain=3.0), depth=2), _x()),
          lambda: (Stack(HandAttention, depth=2), _x()), may={"IL101"}),
]

CASES = [*IL204, *IL205]
