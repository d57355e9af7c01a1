"""A write through `.data` into the output `exp` saved: silently wrong gradients."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        h = x.exp()
        h.data.mul_(2)
        return h * 3


class Reference(nn.Module):
    def forward(self, x):
        return x.exp() * 2 * 3


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
