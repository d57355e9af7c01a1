"""`ReLU(inplace=True)` after a conv: conv saved its input, not its output."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1).double()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.conv(x))


def inputs():
    return (torch.randn(1, 3, 6, 6, dtype=torch.float64),)
