"""np.tile then np.cumsum along an axis."""

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
        return torch.from_numpy(np.cumsum(np.tile(a, (1, 2)), axis=1))


class Reference(Model):
    def forward(self, x):
        h = self.lin(x)
        return torch.cumsum(torch.tile(h, (1, 2)), dim=1)


def inputs():
    return (torch.randn(5, 4),)
