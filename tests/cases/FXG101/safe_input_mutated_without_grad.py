"""An input that does not require grad mutated in place: state the caller observes."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5).double()

    def forward(self, x):
        x.add_(1)
        return self.lin(x)


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64),)
