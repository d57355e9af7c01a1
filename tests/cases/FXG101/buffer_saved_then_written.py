"""A buffer saved by `*`, then clamped in place: the state write is kept, `*` saves a clone."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(5, dtype=torch.float64))

    def forward(self, x):
        y = self.w * self.scale
        self.scale.clamp_(0.5, 2.0)
        return y * x + self.scale


class Reference(Model):
    def forward(self, x):
        y = self.w * self.scale.clone()
        self.scale.clamp_(0.5, 2.0)
        return y * x + self.scale


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
