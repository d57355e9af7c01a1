"""A buffer counter updated in forward: module state, nothing saved it."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        self.calls += 1
        return x * 2


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
