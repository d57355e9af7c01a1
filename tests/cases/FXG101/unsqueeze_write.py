"""A write through `y.unsqueeze(0)`."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x.tanh()
        u = y.unsqueeze(0)
        u.mul_(0.5)
        return y, u


class Reference(nn.Module):
    def forward(self, x):
        y = x.tanh() * 0.5
        return y, y.unsqueeze(0)


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
