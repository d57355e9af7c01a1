"""The mean of a boolean array is float64 in NumPy."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x):
        h = self.lin(x)
        a = h.detach().numpy()
        frac = (a > 0).mean(axis=0)
        return torch.from_numpy(frac).float() * h + torch.from_numpy(a.mean(axis=0))


class Reference(Model):
    def forward(self, x):
        h = self.lin(x)
        return (h > 0).double().mean(dim=0).float() * h + h.mean(dim=0)


def inputs():
    return (torch.randn(5, 4),)
