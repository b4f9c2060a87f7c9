"""Pairs for the signal-stream rules: IL201 residuals, IL202 branch sums, IL203 concats, IL206 dropout."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from . import pair

# -- IL201 unscaled-residual ------------------------------------------------------------------------------------


class PlusBlock(nn.Module):
    """``x + fc2(relu(fc1(x)))`` with Kaiming on both: a branch as strong as its input."""

    def __init__(self, d: int, skipinit: bool):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(self.fc2.weight, nonlinearity="linear")
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)
        if skipinit:
            nn.init.zeros_(self.fc2.weight)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


def _plus_stack(skipinit: bool):
    return nn.Sequential(*[PlusBlock(128, skipinit) for _ in range(8)]), torch.randn(32, 128)


class BasicBlockNoBN(nn.Module):
    """torchvision's BasicBlock without BatchNorm: ``out += identity``."""

    def __init__(self, c: int, fixup: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        nn.init.kaiming_normal_(self.conv1.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(self.conv2.weight, nonlinearity="relu")
        nn.init.zeros_(self.conv1.bias)
        nn.init.zeros_(self.conv2.bias)
        if fixup:  # Fixup: the branch's last layer starts at zero
            nn.init.zeros_(self.conv2.weight)

    def forward(self, x):
        identity = x
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        out += identity
        return F.relu(out)


class ResNetNoBN(nn.Module):
    def __init__(self, fixup: bool, c: int = 16, blocks: int = 6):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        nn.init.kaiming_normal_(self.stem.weight, nonlinearity="relu")
        self.blocks = nn.Sequential(*[BasicBlockNoBN(c, fixup) for _ in range(blocks)])
        self.fc = nn.Linear(c, 10)
        nn.init.zeros_(self.fc.weight)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(x.mean((2, 3)))


class AddBlock(nn.Module):
    """``torch.add(x, branch(x))`` with a Linear-GELU-Linear branch; the fix normalizes the branch's input
    (Pre-LN), which makes the stream grow linearly."""

    def __init__(self, d: int, pre_ln: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d) if pre_ln else nn.Identity()
        self.branch = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        nn.init.kaiming_normal_(self.branch[0].weight, nonlinearity="relu")
        nn.init.kaiming_normal_(self.branch[2].weight, nonlinearity="linear")

    def forward(self, x):
        return torch.add(x, self.branch(self.norm(x)))


class AddStack(nn.Module):
    def __init__(self, pre_ln: bool, d: int = 64, depth: int = 8):
        super().__init__()
        self.blocks = nn.ModuleList(AddBlock(d, pre_ln) for _ in range(depth))
        self.norm = nn.LayerNorm(d) if pre_ln else nn.Identity()
        self.head = nn.Linear(d, 4)
        nn.init.normal_(self.head.weight, std=0.01)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class NormFreeAttentionBlock(nn.Module):
    """A transformer block with no normalization at all; fixed by ReZero (a zero scalar on each branch)."""

    def __init__(self, d: int, rezero: bool):
        super().__init__()
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        for m in (self.qkv, self.proj, self.fc2):
            nn.init.xavier_normal_(m.weight)
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        self.alpha = nn.Parameter(torch.zeros(())) if rezero else None
        self.heads = 4

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        a = self.proj(a)
        x = x + (a if self.alpha is None else self.alpha * a)
        m = self.fc2(F.relu(self.fc1(x)))
        return x + (m if self.alpha is None else self.alpha * m)


class ParallelBlock(nn.Module):
    """GPT-J/PaLM's parallel block, ``x + attn(x) + mlp(x)``, no normalization; fixed by ReZero."""

    def __init__(self, d: int, rezero: bool):
        super().__init__()
        self.inner = NormFreeAttentionBlock(d, rezero)

    def forward(self, x):
        blk = self.inner
        b, n, d = x.shape
        q, k, v = blk.qkv(x).view(b, n, 3, blk.heads, d // blk.heads).permute(2, 0, 3, 1, 4)
        a = blk.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        m = blk.fc2(F.relu(blk.fc1(x)))
        if blk.alpha is not None:
            return x + blk.alpha * a + blk.alpha * m
        return x + a + m


IL201 = [
    # 2^8 = 256 growth
    *pair("IL201", "sequential-plus", lambda: _plus_stack(False), lambda: _plus_stack(True), may={"IL301"}),
    *pair("IL201", "out-plus-equals", lambda: (ResNetNoBN(False), torch.randn(2, 3, 16, 16)),
          lambda: (ResNetNoBN(True), torch.randn(2, 3, 16, 16)), may={"IL301"}),
    *pair("IL201", "torch-add", lambda: (AddStack(False), torch.randn(4, 8, 64)),
          lambda: (AddStack(True), torch.randn(4, 8, 64)), may={"IL301"}),
    *pair("IL201", "sdpa-no-norm", lambda: (nn.Sequential(*[NormFreeAttentionBlock(32, False) for _ in range(4)]),
                                            torch.randn(2, 8, 32)),
          lambda: (nn.Sequential(*[NormFreeAttentionBlock(32, True) for _ in range(4)]), torch.randn(2, 8, 32)),
          may={"IL301", "IL205"}),
    # x111 over 4 parallel blocks, measured (IL202 sees each block's two branches; IL205 the grown logits)
    *pair("IL201", "parallel-residual", lambda: (nn.Sequential(*[ParallelBlock(32, False) for _ in range(4)]),
                                                 torch.randn(2, 8, 32)),
          lambda: (nn.Sequential(*[ParallelBlock(32, True) for _ in range(4)]), torch.randn(2, 8, 32)),
          may={"IL301", "IL205", "IL202"}),
]

# -- IL202 unscaled-branch-sum ----------------------------------------------------------------------------------


class MultiPath(nn.Module):
    def __init__(self, scaled: bool, c: int = 32):
        super().__init__()
        self.paths = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2) for k in (1, 3, 5, 7))
        for p in self.paths:
            nn.init.kaiming_normal_(p.weight, nonlinearity="linear")
            nn.init.zeros_(p.bias)
        self.scale = 1 / math.sqrt(len(self.paths)) if scaled else 1.0

    def forward(self, x):
        return sum(p(x) for p in self.paths) * self.scale


def _multipath(scaled: bool):
    head = nn.Conv2d(32, 10, 1)
    nn.init.normal_(head.weight, std=0.01)
    return nn.Sequential(MultiPath(scaled), MultiPath(scaled), MultiPath(scaled), head), torch.randn(2, 32, 8, 8)


class Stacked(nn.Module):
    """``torch.stack([...]).sum(0)`` over linear experts; the fix divides by sqrt(N)."""

    def __init__(self, scaled: bool, d: int = 64, n: int = 8):
        super().__init__()
        self.experts = nn.ModuleList(nn.Linear(d, d) for _ in range(n))
        for e in self.experts:
            nn.init.kaiming_normal_(e.weight, nonlinearity="linear")
            nn.init.zeros_(e.bias)
        self.scaled = scaled
        self.head = nn.Linear(d, 1)

    def forward(self, x):
        y = torch.stack([e(x) for e in self.experts]).sum(0)
        if self.scaled:
            y = y / math.sqrt(len(self.experts))
        return self.head(torch.tanh(y))


class Inception(nn.Module):
    """Three branches of different depth added with ``+`` in an explicit forward."""

    def __init__(self, scaled: bool, c: int = 24):
        super().__init__()
        self.b1 = nn.Conv2d(c, c, 1)
        self.b2 = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
        self.b3 = nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.Conv2d(c, c, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu" if m is self.b2[0] else "linear")
                nn.init.zeros_(m.bias)
        with torch.no_grad():  # the pooled branch: average pooling over 9 positions divides its variance
            self.b3[1].weight.mul_(2.0)
        self.scaled = scaled

    def forward(self, x):
        y = self.b1(x) + self.b2(x) + self.b3(x)
        return y / math.sqrt(3) if self.scaled else y


def _inception(scaled: bool):
    head = nn.Conv2d(24, 4, 1)
    nn.init.normal_(head.weight, std=0.01)
    return nn.Sequential(Inception(scaled), nn.ReLU(), Inception(scaled), nn.ReLU(), Inception(scaled), head), \
        torch.randn(2, 24, 8, 8)


IL202 = [
    # 4 paths: x4 per block, x64 over 3 (IL303 may see the drift)
    *pair("IL202", "sum-generator", lambda: _multipath(False), lambda: _multipath(True), may={"IL303"}),
    *pair("IL202", "stack-sum", lambda: (Stacked(False), torch.randn(16, 64)), lambda: (Stacked(True), torch.randn(16, 64)),
          may={"IL302", "IL303"}),
    *pair("IL202", "inception-explicit", lambda: _inception(False), lambda: _inception(True), may={"IL303"}),
]

# -- IL203 concat-scale-mismatch --------------------------------------------------------------------------------


class Recommender(nn.Module):
    def __init__(self, emb_std: float | None):
        super().__init__()
        self.item = nn.Embedding(1000, 32)
        if emb_std is not None:
            nn.init.normal_(self.item.weight, std=emb_std)
        self.mlp = nn.Sequential(nn.Linear(32 + 16, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, ids, features):
        return self.mlp(torch.cat([self.item(ids), features], dim=-1))


def _recommender(emb_std):
    return Recommender(emb_std), (torch.randint(0, 1000, (8,)), torch.randn(8, 16))


class RGBD(nn.Module):
    """RGB normalized, depth in raw millimetres: concatenated channels 1000x apart in scale."""

    def __init__(self, normalize: bool):
        super().__init__()
        self.conv = nn.Conv2d(4, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 2, 1)
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        self.normalize = normalize

    def forward(self, rgb, depth_mm):
        depth = (depth_mm - 1500.0) / 500.0 if self.normalize else depth_mm
        return self.out(F.relu(self.conv(torch.cat((rgb, depth), dim=1))))


def _rgbd(normalize: bool):
    return RGBD(normalize), (torch.randn(2, 3, 16, 16), 1500.0 + 500.0 * torch.randn(2, 1, 16, 16))


class UNetDecoder(nn.Module):
    """A decoder conv reading the skip and the upsampled map (2c channels into 2c), initialized with Kaiming for
    the skip's width alone: variance 2x what the concatenated fan-in asks."""

    def __init__(self, concat_fans: bool, c: int = 16):
        super().__init__()
        self.enc = nn.Conv2d(3, c, 3, padding=1)
        self.down = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(c, c, 2, stride=2)
        self.dec = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.out = nn.Conv2d(2 * c, 1, 1)
        for m in (self.enc, self.down, self.up):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        fan_in = (2 * c if concat_fans else c) * 9
        nn.init.normal_(self.dec.weight, std=math.sqrt(2 / fan_in))
        nn.init.normal_(self.out.weight, std=0.01)

    def forward(self, x):
        skip = F.relu(self.enc(x))
        up = F.relu(self.up(F.relu(self.down(skip))))
        return self.out(F.relu(self.dec(torch.cat([skip, up], 1))))


IL203 = [
    # N(0, 0.02) embedding next to standardized features: second-moment ratio 2500
    *pair("IL203", "embedding-features", lambda: _recommender(0.02), lambda: _recommender(None)),
    *pair("IL203", "raw-units", lambda: _rgbd(False), lambda: _rgbd(True), may={"IL101", "IL301", "IL303"}),
    *pair("IL203", "decoder-init", lambda: (UNetDecoder(False), torch.randn(2, 3, 16, 16)),
          lambda: (UNetDecoder(True), torch.randn(2, 3, 16, 16))),
]

# -- IL206 non-inverted-dropout ---------------------------------------------------------------------------------


class MaskDropout(nn.Module):
    def __init__(self, form: str, inverted: bool, p: float = 0.3):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 10)
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        nn.init.normal_(self.fc2.weight, std=0.01)
        self.form, self.inverted, self.p = form, inverted, p

    def forward(self, x):
        h = F.relu(self.fc1(x))
        if self.training:
            keep = 1 - self.p
            if self.form == "rand":
                mask = (torch.rand_like(h) > self.p).float()
            else:
                mask = torch.empty_like(h).bernoulli_(keep)
            h = h * mask / keep if self.inverted else h * mask
        return self.fc2(h)


class DropPathBlock(nn.Module):
    """Stochastic depth written by hand on a Pre-LN residual branch: one keep-draw per sample."""

    def __init__(self, d: int, inverted: bool, keep: float = 0.8):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        nn.init.xavier_normal_(self.fc.weight)
        self.inverted, self.keep = inverted, keep

    def forward(self, x):
        branch = self.fc(self.norm(x))
        if self.training:
            mask = (torch.rand(x.shape[0], 1, 1, device=x.device) < self.keep).to(x.dtype)
            branch = branch * mask / self.keep if self.inverted else branch * mask
        return x + branch


def _droppath(inverted: bool):
    return nn.Sequential(*[DropPathBlock(32, inverted) for _ in range(4)], nn.LayerNorm(32)), torch.randn(8, 6, 32)


IL206 = [
    *pair("IL206", "rand-mask", lambda: (MaskDropout("rand", False), torch.randn(8, 32)),
          lambda: (MaskDropout("rand", True), torch.randn(8, 32))),
    *pair("IL206", "bernoulli", lambda: (MaskDropout("bernoulli", False), torch.randn(8, 32)),
          lambda: (MaskDropout("bernoulli", True), torch.randn(8, 32))),
    *pair("IL206", "drop-path", lambda: _droppath(False), lambda: _droppath(True)),
]

CASES = [*IL201, *IL202, *IL203, *IL206]
