"""`d = self.drop(h); h.mul_(2); return d + h`: in eval Dropout returns h itself.

In train mode `d` is a fresh tensor and `d + h` reads the doubled `h` once; in eval `d` is
`h`, so it sees the write too (4 * sigmoid). sigmoid saved `h`, so the write is rewritten,
and the rewrite must keep `d` reading the written value where it aliases `h`.
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        h = torch.sigmoid(self.lin(x))
        d = self.drop(h)
        h.mul_(2)
        return d + h


def inputs(batch=4):
    return (torch.randn(batch, 4, requires_grad=True),)
