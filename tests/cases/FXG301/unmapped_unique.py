"""Negative: np.unique (data-dependent output size) stays."""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        pass

    def forward(self, x):
        a = np.round(x.detach().numpy())
        return torch.as_tensor(np.unique(a)) + 1


def inputs():
    return (torch.tensor([[1.2, 0.9, 3.1], [3.0, 1.1, -0.2]]),)
