"""A write into a `split` output."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x + 1
        p, q = y.split([2, 3], dim=1)
        q.mul_(3)
        return y, p


class Reference(nn.Module):
    def forward(self, x):
        y = x + 1
        y = torch.cat([y[:, :2], y[:, 2:] * 3], dim=1)
        return y, y[:, :2]


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
