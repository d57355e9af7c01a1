"""`masked_fill_` on a fresh sum."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x + 1
        y.masked_fill_(x > 0, 0.0)
        return y.sin()


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
