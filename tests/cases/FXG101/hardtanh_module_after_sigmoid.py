"""`nn.Hardtanh(inplace=True)` overwrites the output `sigmoid` saved."""

import torch
import torch.nn.functional as F
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.clip = nn.Hardtanh(0.2, 0.7, inplace=True)

    def forward(self, x):
        return self.clip(x.sigmoid()) * x


class Reference(nn.Module):
    def forward(self, x):
        return F.hardtanh(x.sigmoid(), 0.2, 0.7) * x


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
