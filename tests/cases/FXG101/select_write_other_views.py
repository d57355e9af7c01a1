"""A write into `y[0]`; the base and another view (`y[:, 1]`) are read after."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = torch.tanh(x)
        r = y[0]
        c = y[:, 1]
        r.add_(1)
        return y, c, r


class Reference(nn.Module):
    def forward(self, x):
        y = torch.tanh(x)
        y = torch.select_scatter(y, y[0] + 1, 0, 0)
        return y, y[:, 1], y[0]


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
