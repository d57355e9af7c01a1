"""Negative: `r = a.reshape(-1); r[0] = 5`: whether r is a view of a depends on strides."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        a = h.detach().numpy() * 1
        r = a.reshape(-1)
        r[0] = 5
        return torch.from_numpy(a + 1)


def inputs(batch=3):
    return (torch.randn(batch, 4),)
