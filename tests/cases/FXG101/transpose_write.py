"""A write through `y.t()` into a saved tensor."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x.sigmoid()
        t = y.t()
        t.mul_(2)
        return y, t.sum(0)


class Reference(nn.Module):
    def forward(self, x):
        y = x.sigmoid() * 2
        return y, y.t().sum(0)


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
