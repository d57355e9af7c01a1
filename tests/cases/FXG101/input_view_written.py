"""A write into a view of an input that requires grad."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        x[:, 0] = 0.0
        return x * x


class Reference(nn.Module):
    def forward(self, x):
        mask = torch.ones_like(x)
        mask[:, 0] = 0.0
        y = x * mask
        return y * y


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
