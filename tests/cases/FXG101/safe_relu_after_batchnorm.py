"""`ReLU(inplace=True)` after batch norm, and its running-stat updates."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3).double()
        self.bn = nn.BatchNorm2d(4).double()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


def inputs():
    return (torch.randn(2, 3, 6, 6, dtype=torch.float64),)
