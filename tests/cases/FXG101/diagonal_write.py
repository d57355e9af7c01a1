"""`y.diagonal().zero_()` on a saved tensor; the base is read after."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x.sigmoid()
        d = y.diagonal()
        d.zero_()
        return y


class Reference(nn.Module):
    def forward(self, x):
        y = x.sigmoid()
        return torch.diagonal_scatter(y, torch.zeros(4, dtype=y.dtype))


def inputs():
    return (torch.randn(4, 4, dtype=torch.float64, requires_grad=True),)
