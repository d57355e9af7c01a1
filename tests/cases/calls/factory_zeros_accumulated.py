"""A zeros tensor made in forward and accumulated into with `+=`: fresh on every call.

Kept as a graph constant, the accumulator would carry the previous call's sum.
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        acc = torch.zeros(4)
        acc += self.lin(x).sum(0)
        acc += x.pow(2).sum(0)
        return torch.tanh(acc)


def inputs(batch=3):
    return (torch.randn(batch, 4, requires_grad=True),)
