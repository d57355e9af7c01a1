"""MobileNet-style `Hardswish(inplace=True)` after conv and batch norm."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1).double()
        self.bn = nn.BatchNorm2d(4).double()
        self.act = nn.Hardswish(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


def inputs():
    return (torch.randn(2, 3, 5, 5, dtype=torch.float64),)
