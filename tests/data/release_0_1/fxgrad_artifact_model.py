"""The model whose fixed module and `fxgrad fix -o` folder are kept in this folder.

It exercises what a saved fixed module must bring back: a buffer written in forward, item
assignment, an unsafe in-place write (rewritten), a write into a chunk piece (rewritten
through fxgrad.runtime.writable_piece), a no_grad block, a custom autograd.Function, a
size guard and a train/eval branch.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Straight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.round()

    @staticmethod
    def backward(ctx, g):
        return g


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        y = self.lin(x).sigmoid()
        y.mul_(2)  # unsafe: sigmoid saved its output
        a, b = (y * 1).chunk(2, dim=1)
        a.zero_()  # a chunk piece: rewritten with the same chunk call
        z = x * 1
        z[0] = 0
        with torch.no_grad():
            scale = y.mean()
        q = Straight.apply(y * 3) + b.sum()
        if self.training:
            q = F.dropout(q, 0.5)
        if x.shape[0] % 2 == 0:
            q = q * 2
        return q * scale + z


def inputs():
    return (torch.randn(4, 4),)
