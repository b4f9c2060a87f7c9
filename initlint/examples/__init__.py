"""Example models for the quickstart: a few healthy, a few with the defects initlint finds.

    initlint initlint.examples:ResidualMLP            # unscaled residual stream
    initlint initlint.examples:ScaledResidualMLP      # the same, fixed

Every model here builds with its defaults and has an ``example_inputs()`` method, so it can be linted by name.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ResidualMLP", "ScaledResidualMLP", "DepthwiseNet", "CheckerboardGenerator", "Generator",
    "PostLNEncoder", "PreLNEncoder", "HandDropoutMLP", "SmallResNet",
]


# -- defective --------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    def __init__(self, width: int, scale: float = 1.0):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.scale = scale
        for fc, gain in ((self.fc1, math.sqrt(2.0)), (self.fc2, 1.0)):
            nn.init.normal_(fc.weight, 0.0, gain / math.sqrt(width))
            nn.init.zeros_(fc.bias)

    def forward(self, x):
        return x + self.scale * self.fc2(F.relu(self.fc1(x)))


class ResidualMLP(nn.Module):
    """Twelve residual blocks with no normalization and no branch scaling: the stream's variance doubles
    in every block."""

    def __init__(self, depth: int = 12, width: int = 128):
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(depth)])
        self.width = width

    def forward(self, x):
        return self.blocks(x)

    def example_inputs(self):
        return (torch.randn(8, self.width, generator=torch.Generator().manual_seed(0)),)


class DepthwiseNet(nn.Module):
    """MobileNet-style separable convs initialized as torchvision does (``kaiming_normal_(mode="fan_out")``),
    which computes the depthwise fan-out as if ``groups == 1``, with no normalization to absorb it."""

    def __init__(self, channels: int = 64, depth: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1)]
        for _ in range(depth):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.ReLU(),
                       nn.Conv2d(channels, channels, 1), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.body(x)


class Generator(nn.Module):
    """A DCGAN-style generator: transposed convs with kernel 4 and stride 2 (healthy when ``kernel=4``)."""

    def __init__(self, nz: int = 32, ngf: int = 32, kernel: int = 4):
        super().__init__()
        out_pad = kernel % 2  # kernel 3 needs output_padding 1 to double the size
        self.nz = nz
        self.net = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 2, 4, 1, 0), nn.BatchNorm2d(ngf * 2), nn.ReLU(),
            nn.ConvTranspose2d(ngf * 2, ngf, kernel, 2, 1, out_pad), nn.BatchNorm2d(ngf), nn.ReLU(),
            nn.ConvTranspose2d(ngf, 3, kernel, 2, 1, out_pad), nn.Tanh(),
        )

    def forward(self, z):
        return self.net(z)

    def example_inputs(self):
        return (torch.randn(2, self.nz, 1, 1, generator=torch.Generator().manual_seed(0)),)


class CheckerboardGenerator(Generator):
    """Kernel 3, stride 2: output pixels get 4, 2 or 1 kernel taps depending on their phase."""

    def __init__(self):
        super().__init__(kernel=3)


class PostLNEncoder(nn.Module):
    """``nn.TransformerEncoder`` in its default Post-LN arrangement, its layers deep-copied from one."""

    def __init__(self, d_model: int = 64, layers: int = 6):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.d_model = d_model

    def forward(self, x):
        return self.encoder(x)

    def example_inputs(self):
        return (torch.randn(2, 16, self.d_model, generator=torch.Generator().manual_seed(0)),)


class HandDropoutMLP(nn.Module):
    """Dropout written by hand without dividing by the keep probability."""

    def __init__(self, width: int = 128, depth: int = 4, p: float = 0.5):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.p = p

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
            x = x * (torch.rand_like(x) > self.p)
        return x

    def example_inputs(self):
        return (torch.randn(8, self.layers[0].in_features, generator=torch.Generator().manual_seed(0)),)


# -- healthy ----------------------------------------------------------------------------------------------


class ScaledResidualMLP(ResidualMLP):
    """The same stream with each branch scaled by 1/sqrt(depth)... the SkipInit/Fixup family of fixes."""

    def __init__(self, depth: int = 12, width: int = 128):
        super().__init__(depth, width)
        self.blocks = nn.Sequential(*[ResidualBlock(width, scale=1.0 / math.sqrt(depth)) for _ in range(depth)])


class PreLNEncoder(PostLNEncoder):
    """Pre-LN, each layer initialized independently."""

    def __init__(self, d_model: int = 64, layers: int = 6):
        super().__init__(d_model, layers)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, batch_first=True, norm_first=True),
            layers, enable_nested_tensor=False)
        for layer in self.encoder.layers:
            layer.apply(_reset)


def _reset(m: nn.Module) -> None:
    if hasattr(m, "_reset_parameters"):
        m._reset_parameters()
    elif hasattr(m, "reset_parameters"):
        m.reset_parameters()


class SmallResNet(nn.Module):
    """Conv-BN-ReLU residual blocks, torchvision-style init: healthy."""

    def __init__(self, width: int = 32, depth: int = 4, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
            for _ in range(depth))
        self.head = nn.Linear(width, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.head(x.mean((2, 3)))
