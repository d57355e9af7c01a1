"""The simplest detour: one ufunc on a layer's output."""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x):
        h = self.lin(x)
        s = np.sin(h.detach().numpy())
        return torch.from_numpy(s) * 2


class Reference(Model):
    def forward(self, x):
        return torch.sin(self.lin(x)) * 2


def inputs():
    return (torch.randn(5, 4),)
