"""`h * h` saved `h`; `h += 1` overwrites it."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        h = x * 3
        z = h * h
        h += 1
        return z + h


class Reference(nn.Module):
    def forward(self, x):
        h = x * 3
        z = h * h
        return z + (h + 1)


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
