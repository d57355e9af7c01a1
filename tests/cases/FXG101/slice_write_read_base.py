"""A write into a slice of a saved tensor; the base is read later."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x.exp()
        v = y[:, 1:3]
        v.mul_(2)
        return y, v


class Reference(nn.Module):
    def forward(self, x):
        y = x.exp()
        y = torch.cat([y[:, :1], y[:, 1:3] * 2, y[:, 3:]], dim=1)
        return y, y[:, 1:3]


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
