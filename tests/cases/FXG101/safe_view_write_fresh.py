"""A write into a view of a fresh tensor nobody saved."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x * 2
        y[:, 0].mul_(3)
        y.t()[1].add_(1)
        return y


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
