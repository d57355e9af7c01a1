"""A write into an `unbind` output, then reading the base and a sibling."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x * 2
        a, b, c, d = y.unbind(0)
        a.add_(1)
        return y, b, a


class Reference(nn.Module):
    def forward(self, x):
        y = x * 2
        y = torch.select_scatter(y, y[0] + 1, 0, 0)
        return y, y[1], y[0]


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
