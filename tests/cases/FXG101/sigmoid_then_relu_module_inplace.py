"""`nn.ReLU(inplace=True)` directly on a sigmoid's saved output."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5).double()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = torch.sigmoid(self.lin(x))
        return self.act(h) * x


class Reference(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5).double()

    def forward(self, x):
        return torch.relu(torch.sigmoid(self.lin(x))) * x


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64),)
