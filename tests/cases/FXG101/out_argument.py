"""`torch.mul(y, 2, out=y)` overwrites the output `exp` saved."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x.exp()
        torch.mul(y, 2, out=y)
        return y


class Reference(nn.Module):
    def forward(self, x):
        return x.exp() * 2


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
