"""Found by fuzzing: the base of `unbind` outputs is written while an output is read after."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x * 2
        u = y.unbind(0)[1]
        y.mul_(2)
        return y, u * 1


class Reference(nn.Module):
    def forward(self, x):
        y = x * 2 * 2
        return y, y[1] * 1


def inputs():
    return (torch.randn(4, 4, dtype=torch.float64, requires_grad=True),)
