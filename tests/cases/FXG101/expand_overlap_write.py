"""A write into an expanded tensor whose elements overlap: eager refuses it in any grad mode.

PyTorch's message says to clone first; the rewrite is the out-of-place op, and the base
keeps its values. A later read of the base shows that.
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        row = self.lin(x).sum(0, keepdim=True)
        grid = row.expand(3, 4)
        grid.add_(1)
        return grid * 2, row


class Reference(Model):
    def forward(self, x):
        row = self.lin(x).sum(0, keepdim=True)
        grid = row.expand(3, 4).clone()
        grid.add_(1)
        return grid * 2, row


def inputs():
    return (torch.randn(3, 4),)
