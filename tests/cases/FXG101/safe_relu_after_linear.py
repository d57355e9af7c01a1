"""`F.relu(..., inplace=True)` after a linear layer."""

import torch
import torch.nn.functional as F
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3).double()

    def forward(self, x):
        return F.relu(self.lin(x), inplace=True)


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64),)
