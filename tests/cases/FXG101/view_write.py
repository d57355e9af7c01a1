"""A write through `y.view(-1)`; base and view read after."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x.exp()
        v = y.view(-1)
        v.add_(1)
        return y.sum(0), v


class Reference(nn.Module):
    def forward(self, x):
        y = x.exp() + 1
        return y.sum(0), y.view(-1)


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
