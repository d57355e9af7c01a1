"""A write into the base while a view made earlier is read after."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x.exp()
        first = y[0]
        y.mul_(3)
        return first, y


class Reference(nn.Module):
    def forward(self, x):
        y = x.exp() * 3
        return y[0], y


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
