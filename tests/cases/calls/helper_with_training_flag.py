"""A module-level helper called with `self.training`: dropout and a write in train mode only."""

import torch
import torch.nn.functional as F
from torch import nn


def noisy(h, training):
    if training:
        h = F.dropout(h, 0.5, training=True)
        h.mul_(0.5)  # dropout saved its mask, not h: safe in place
    return h


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return noisy(torch.tanh(self.lin(x)), self.training) * 2


def inputs(batch=4):
    return (torch.randn(batch, 4, requires_grad=True),)
