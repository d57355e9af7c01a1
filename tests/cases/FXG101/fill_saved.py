"""`fill_` on the output `sigmoid` saved."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x.sigmoid()
        z = y * 2
        y.fill_(0.5)
        return z + y


class Reference(nn.Module):
    def forward(self, x):
        return x.sigmoid() * 2 + 0.5


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
