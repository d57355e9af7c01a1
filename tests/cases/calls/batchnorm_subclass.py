"""A BatchNorm1d subclass whose forward calls `super().forward(x)`.

Train mode normalizes with batch statistics and updates the running ones; eval mode uses
the running statistics. Each mode must be decided on that mode, and the running
statistics must move exactly as eager's, once per call.
"""

import torch
from torch import nn


class ScaledNorm(nn.BatchNorm1d):
    def forward(self, x):
        return super().forward(x) * 2


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = ScaledNorm(4)
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.sigmoid(self.norm(self.lin(x)))
        h.mul_(2)  # sigmoid saved h
        return h


def inputs(batch=5):
    return (torch.randn(batch, 4, requires_grad=True),)
