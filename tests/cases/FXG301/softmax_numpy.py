"""A numerically stable softmax written in NumPy."""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x):
        h = self.lin(x)
        a = h.detach().numpy()
        e = np.exp(a - a.max(axis=-1, keepdims=True))
        return torch.from_numpy(e / e.sum(axis=-1, keepdims=True))


class Reference(Model):
    def forward(self, x):
        return torch.softmax(self.lin(x), dim=-1)


def inputs():
    return (torch.randn(5, 4),)
