"""`tanh` saves its output; `h += 1` overwrites it."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        h = torch.tanh(x)
        h += 1
        return h * h


class Reference(nn.Module):
    def forward(self, x):
        h = torch.tanh(x) + 1
        return h * h


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
