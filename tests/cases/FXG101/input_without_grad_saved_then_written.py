"""An input that does not require grad, saved by `*`, then written: kept, with a clone saved."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, dtype=torch.float64))

    def forward(self, x):
        y = x * self.w
        x.mul_(2)
        return y + x


class Reference(Model):
    def forward(self, x):
        y = x.clone() * self.w
        x.mul_(2)
        return y + x


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64),)
