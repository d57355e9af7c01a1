"""`np.eye(a.shape[0]) @ a`: torch.eye of the tensor's size, right for every batch size."""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        a = self.lin(x).detach().numpy()
        n = a.shape[0]
        return torch.from_numpy((np.eye(n) * 2) @ a)


class Reference(Model):
    def forward(self, x):
        h = self.lin(x).double()
        return (torch.eye(h.shape[0], dtype=torch.float64) * 2) @ h


def inputs(batch=3):
    return (torch.randn(batch, 4),)
