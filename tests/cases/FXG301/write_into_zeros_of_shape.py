"""`z = np.zeros(a.shape); z[:, 0] = a[:, 1]`: torch.zeros of the tensor's shape, written."""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        a = h.detach().numpy()
        z = np.zeros(a.shape)
        z[:, 0] = a[:, 1]
        return torch.from_numpy(z)


class Reference(Model):
    def forward(self, x):
        h = self.lin(x).double()
        return torch.cat([h[:, 1:2], torch.zeros_like(h[:, 1:])], dim=1)


def inputs(batch=3):
    return (torch.randn(batch, 4),)
