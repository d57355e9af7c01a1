"""`index_add_` on the output `exp` saved."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x, src):
        h = x.exp()
        h.index_add_(0, torch.tensor([0, 2]), src)
        return h


class Reference(nn.Module):
    def forward(self, x, src):
        return x.exp().index_add(0, torch.tensor([0, 2]), src)


def inputs():
    return (
        torch.randn(4, 5, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 5, dtype=torch.float64, requires_grad=True),
    )
