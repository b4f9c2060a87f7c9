"""Small models whose source lines the capture tests point at. Line numbers matter: edit with care."""

import torch
from torch import nn
from torch.nn import functional as F


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 4) / 2)
        self.gamma = nn.Parameter(torch.full((8,), 0.1))
        self.proj = nn.Linear(8, 8)  # LINE_PROJ_DEFINED

    def forward(self, x):
        h = F.linear(x, self.w)  # LINE_LINEAR
        h = self.proj(h)  # LINE_PROJ_CALLED
        h = h * self.gamma
        h = h / 2.0
        h = h + h
        return torch.cat([h, F.gelu(h)], dim=-1)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # the branch taken depends on a value: fx and export both give up
            return self.fc(x)
        return -self.fc(x)


class ShapeDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.shape[0] > 1:  # LINE_SHAPE_IF
            x = self.fc(x)  # LINE_SHAPE_FC
        return x


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.cumsum(self.fc(x), dim=-1)
