"""A NumPy scalar constant in a detour: `a * np.float64(0.5)` promotes float32 to float64.

NumPy 2 treats `np.float64(0.5)` as a float64 operand (a Python 0.5 would keep float32).
"""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        a = x.detach().numpy()
        return torch.from_numpy(a * np.float64(0.5))


class Reference(nn.Module):
    def forward(self, x):
        return x.double() * 0.5


def inputs(batch=4):
    return (torch.randn(batch, 3, requires_grad=True),)
