"""`nn.Dropout(inplace=True)` after a linear layer."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5).double()
        self.drop = nn.Dropout(0.5, inplace=True)

    def forward(self, x):
        return self.drop(self.lin(x))


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64),)
