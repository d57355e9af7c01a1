"""Negative: `t = torch.from_numpy(b); b *= 2`: t shares b's memory and sees the write."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        b = h.detach().numpy() * 1
        t = torch.from_numpy(b)
        b *= 2
        return t + 0


def inputs(batch=3):
    return (torch.randn(batch, 4),)
