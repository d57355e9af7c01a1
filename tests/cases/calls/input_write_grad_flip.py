"""`x.mul_(2)` on an input: harmless on a plain input, refused on one that requires grad.

Called with an input that requires grad (a gradient penalty, input attribution), the
write is rewritten and the caller's `x` keeps its values; with a plain input, the caller
sees the write, as in eager.
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        x.mul_(2)
        return torch.tanh(self.lin(x))


class Reference(Model):
    def forward(self, x):
        return torch.tanh(self.lin(x * 2))


def inputs(batch=4):
    return (torch.randn(batch, 4),)
