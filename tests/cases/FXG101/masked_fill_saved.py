"""`masked_fill_` on the output `sigmoid` saved."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        h = x.sigmoid()
        h.masked_fill_(x > 0.5, 0.0)
        return h * 2


class Reference(nn.Module):
    def forward(self, x):
        return x.sigmoid().masked_fill(x > 0.5, 0.0) * 2


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
