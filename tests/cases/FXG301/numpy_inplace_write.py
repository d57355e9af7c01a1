"""Negative: the NumPy array is written in place; the aliasing is not translated."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        pass

    def forward(self, x):
        a = x.detach().numpy().copy()
        a[a < 0] = 0.0
        return torch.from_numpy(a) * x


def inputs():
    return (torch.randn(3, 4, requires_grad=True),)
