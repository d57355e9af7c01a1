"""`h.sigmoid_()` on a fresh tensor is safe; the `mul_` after it is not."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        h = x * 2
        h.sigmoid_()
        h.mul_(2)
        return h


class Reference(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x * 2) * 2


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
