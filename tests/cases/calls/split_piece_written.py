"""A write into the last `split(3)` piece: how many pieces there are depends on the batch.

At batch 4 the pieces are 3 + 1 and the last is `pieces[1]`; at 10 they are 3 + 3 + 3 + 1
and the last is `pieces[3]`, starting at row 9 (`len(pieces)` changes with the batch).
"""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = torch.tanh(x)
        pieces = y.split(3)
        pieces[len(pieces) - 1].zero_()  # autograd refuses writes into split outputs
        return y * 2


class Reference(nn.Module):
    def forward(self, x):
        y = torch.tanh(x)
        last = (y.shape[0] - 1) // 3 * 3
        y = torch.cat([y[:last], torch.zeros_like(y[last:])])
        return y * 2


def inputs(batch=4):
    return (torch.randn(batch, 3, requires_grad=True),)


BATCHES = (10, 6, 1)
