"""`softmax` saves its output; `F.relu(..., inplace=True)` overwrites it."""

import torch
import torch.nn.functional as F
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        p = F.softmax(x, dim=-1)
        F.relu(p - 0.1, inplace=True)
        q = F.relu(p, inplace=True)
        return q * 3


class Reference(nn.Module):
    def forward(self, x):
        p = F.softmax(x, dim=-1)
        return F.relu(p) * 3


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
