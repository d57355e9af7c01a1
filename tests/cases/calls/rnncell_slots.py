"""`h[t + 1] = cell(x[t], h[t])` into one preallocated tensor, with nn.RNNCell.

The cell saved `h[t]`, a view of `h`, and the next step writes `h[t + 1]`; every weight
must get the gradient of the list-and-stack formulation (Reference). `inputs(batch)`
gives `batch + 1` time steps of `batch` sequences, so the batch scenarios vary both.
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.RNNCell(3, 4)

    def forward(self, x):
        h = x.new_zeros(x.shape[0] + 1, x.shape[1], 4)
        for t in range(x.shape[0]):
            h[t + 1] = self.cell(x[t], h[t])
        return h[1:]


class Reference(Model):
    def forward(self, x):
        hs = [x.new_zeros(x.shape[1], 4)]
        for t in range(x.shape[0]):
            hs.append(self.cell(x[t], hs[-1]))
        return torch.stack(hs[1:])


def inputs(batch=2):
    return (torch.randn(batch + 1, batch, 3, requires_grad=True),)


BATCHES = (4, 1)
