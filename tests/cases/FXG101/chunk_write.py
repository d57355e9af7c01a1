"""A write into a `chunk` output."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x * 1.5
        c0, c1 = y.chunk(2)
        c0.zero_()
        return y, c1


class Reference(nn.Module):
    def forward(self, x):
        y = x * 1.5
        y = torch.cat([torch.zeros_like(y[:2]), y[2:]])
        return y, y[2:]


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
