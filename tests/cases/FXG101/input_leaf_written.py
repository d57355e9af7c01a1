"""An input that requires grad written in place (eager refuses)."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        x.mul_(2)
        return x.sin()


class Reference(nn.Module):
    def forward(self, x):
        return (x * 2).sin()


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
