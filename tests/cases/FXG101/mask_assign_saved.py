"""Boolean-mask assignment into the output `sigmoid` saved."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = torch.sigmoid(x)
        y[y > 0.5] = 0.0
        return y


class Reference(nn.Module):
    def forward(self, x):
        y = torch.sigmoid(x)
        return torch.where(y > 0.5, torch.zeros_like(y), y)


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
