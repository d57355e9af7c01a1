"""Noise drawn in forward: a new draw on every call, the same one under the same seed."""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        noise = torch.randn(3)
        h = torch.sigmoid(x + noise)
        h.mul_(2)  # sigmoid saved h: rewritten, and the draw must stay where it was
        return h


def inputs(batch=4):
    return (torch.randn(batch, 3, requires_grad=True),)
