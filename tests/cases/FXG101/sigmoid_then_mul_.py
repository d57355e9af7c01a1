"""`sigmoid` saves its output; `h.mul_(2)` overwrites it."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        h = torch.sigmoid(x)
        h.mul_(2)
        return h * x


class Reference(nn.Module):
    def forward(self, x):
        h = torch.sigmoid(x)
        h = h.mul(2)
        return h * x


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
