"""A fixed-length loop whose state is written in place after a Linear saved it."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.Linear(5, 5).double()

    def forward(self, x):
        h = torch.zeros(4, 5, dtype=x.dtype)
        outs = []
        for t in range(3):
            h += x[t]
            out = torch.tanh(self.cell(h))
            h.mul_(0.5)
            h += out
            outs.append(out)
        return torch.stack(outs), h


class Reference(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.Linear(5, 5).double()

    def forward(self, x):
        h = torch.zeros(4, 5, dtype=x.dtype)
        outs = []
        for t in range(3):
            h = h + x[t]
            out = torch.tanh(self.cell(h))
            h = h * 0.5 + out
            outs.append(out)
        return torch.stack(outs), h


def inputs():
    return (torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True),)
