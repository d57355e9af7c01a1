"""`y += b` on a fresh matmul result that nobody saved."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(3, dtype=torch.float64))

    def forward(self, x):
        y = x @ self.w
        y += self.b
        return y


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
