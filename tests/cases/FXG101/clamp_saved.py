"""`clamp_` on the output `exp` saved."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        h = x.exp()
        h.clamp_(max=2.0)
        return h


class Reference(nn.Module):
    def forward(self, x):
        return x.exp().clamp(max=2.0)


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
