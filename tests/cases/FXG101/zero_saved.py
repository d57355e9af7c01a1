"""`zero_` on the output `tanh` saved."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        h = torch.tanh(x)
        k = h * 1.0
        h.zero_()
        return k + h


class Reference(nn.Module):
    def forward(self, x):
        return torch.tanh(x)


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
