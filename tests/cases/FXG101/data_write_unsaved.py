"""A `.data` write that overwrites nothing backward needs: reported, not rewritten."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x * 2
        y.data.add_(1)
        return y * 3


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
