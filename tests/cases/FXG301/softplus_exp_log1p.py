"""np.log1p(np.exp(a)): a hand-written softplus in NumPy."""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x):
        h = self.lin(x)
        a = h.detach().cpu().numpy()
        return torch.from_numpy(np.log1p(np.exp(a)))


class Reference(Model):
    def forward(self, x):
        return torch.log1p(torch.exp(self.lin(x)))


def inputs():
    return (torch.randn(5, 4),)
