"""A NumPy detour decided on float32, called with float64.

`np.tanh` keeps the array's dtype, `astype(np.float64)` always gives float64; the torch
ops that replace the detour must give NumPy's dtypes on every call, and let gradients
through.
"""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        a = x.detach().numpy()
        y = np.tanh(a) * 2
        z = a.astype(np.float64) * 0.5
        return torch.from_numpy(y), torch.from_numpy(z)


class Reference(nn.Module):
    def forward(self, x):
        return torch.tanh(x) * 2, x.double() * 0.5


def inputs(batch=4):
    return (torch.randn(batch, 3, requires_grad=True),)
