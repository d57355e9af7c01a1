"""`y = x * 2; y[0] = 10`: autograd records CopySlices."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        y = x * 2
        y[0] = 10
        return y


def inputs():
    return (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),)
