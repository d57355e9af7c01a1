"""`F.leaky_relu(h, 0.1, True)`: `inplace` passed positionally, after `tanh`."""

import torch
import torch.nn.functional as F
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        h = torch.tanh(x)
        out = F.leaky_relu(h, 0.1, True)
        return out * 2


class Reference(nn.Module):
    def forward(self, x):
        return F.leaky_relu(torch.tanh(x), 0.1) * 2


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
