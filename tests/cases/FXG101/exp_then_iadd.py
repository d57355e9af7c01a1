"""The issue's example: `exp` saved its output, `y += 1` overwrites it."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x.exp()
        y += 1
        return y


class Reference(nn.Module):
    def forward(self, x):
        return x.exp() + 1


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
