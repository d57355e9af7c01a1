"""Negative: np.linalg.eig stays, and so does the chain after it."""

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
        s = a.T @ a
        w, v = np.linalg.eig(s)
        return torch.from_numpy(np.sort(w.real) * 2)


def inputs():
    return (torch.randn(5, 4),)
