"""A write into the second `chunk` piece, decided at batch 4, called at 10, 6 and 1.

The second piece starts at row 2 at batch 4 but at row 5 at batch 10: a rewrite that kept
the example's offsets would write the wrong rows. At batch 1 there is one piece, and
eager's unpacking raises.
"""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x * 1.5
        a, b = y.chunk(2)
        b.mul_(-1)  # autograd refuses writes into chunk outputs
        return y, a


class Reference(nn.Module):
    def forward(self, x):
        y = x * 1.5
        n = (y.shape[0] + 1) // 2
        y = torch.cat([y[:n], -y[n:]])
        return y, y[:n]


def inputs(batch=4):
    return (torch.randn(batch, 3, requires_grad=True),)


BATCHES = (10, 6, 1)
