"""`a @ W` with a module-level NumPy constant: W becomes a float64 tensor constant."""

import numpy as np
import torch
from torch import nn

W = np.full((4, 3), 0.5)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        a = self.lin(x).detach().numpy()
        return torch.from_numpy(a @ W)


class Reference(Model):
    def forward(self, x):
        return self.lin(x).double() @ torch.from_numpy(W)


def inputs(batch=3):
    return (torch.randn(batch, 4),)
