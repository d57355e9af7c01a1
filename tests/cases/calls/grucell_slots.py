"""`out[:, t] = gru(x[:, t], prev)` into one preallocated tensor, with nn.GRUCell.

Each step reads the previous step's slot, which the GRU cell saved; the gradients of
every weight must equal the list-and-stack formulation at each length and batch size
(`inputs(batch)`: `batch` sequences of `batch + 2` steps).
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRUCell(3, 4)

    def forward(self, x):
        out = x.new_zeros(x.shape[0], x.shape[1], 4)
        prev = x.new_zeros(x.shape[0], 4)
        for t in range(x.shape[1]):
            out[:, t] = self.gru(x[:, t], prev)
            prev = out[:, t]
        return out


class Reference(Model):
    def forward(self, x):
        prev = x.new_zeros(x.shape[0], 4)
        outs = []
        for t in range(x.shape[1]):
            prev = self.gru(x[:, t], prev)
            outs.append(prev)
        return torch.stack(outs, 1)


def inputs(batch=2):
    return (torch.randn(batch, batch + 2, 3, requires_grad=True),)


BATCHES = (4, 1)
