"""`a + np.ones(a.shape)`: torch.ones of the tensor's shape, not of the example's."""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        a = self.lin(x).detach().numpy()
        return torch.from_numpy(a + np.ones(a.shape))


class Reference(Model):
    def forward(self, x):
        return self.lin(x).double() + 1


def inputs(batch=3):
    return (torch.randn(batch, 4),)
