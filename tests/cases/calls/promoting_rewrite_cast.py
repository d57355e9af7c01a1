"""`h.mul_(x)` on a float32 `h`: in place it stays float32; `h.mul(x)` promotes with float64 `x`.

The rewrite of the unsafe write must cast back to `h`'s dtype on calls where `x` is
float64, and only there.
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x):
        h = torch.sigmoid(x.float() + self.b)
        h.mul_(x)  # sigmoid saved h
        return h * 2


def inputs(batch=4):
    return (torch.randn(batch, 5, requires_grad=True),)
