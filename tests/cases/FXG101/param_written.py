"""A parameter written in place in forward (eager refuses: a leaf that requires grad)."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, dtype=torch.float64))

    def forward(self, x):
        self.w.mul_(2)
        return x * self.w


class Reference(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, dtype=torch.float64))

    def forward(self, x):
        return x * (self.w * 2)


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
