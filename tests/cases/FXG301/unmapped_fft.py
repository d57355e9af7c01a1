"""Negative: np.fft has no faithful torch twin here; the report says where the gradient stops."""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x):
        h = self.lin(x)
        spec = np.abs(np.fft.rfft(h.detach().numpy(), axis=-1))
        return torch.from_numpy(spec).float() + h.sum()


def inputs():
    return (torch.randn(5, 4),)
