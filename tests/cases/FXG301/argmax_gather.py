"""argmax picks rows; the picked values keep their gradient."""

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
        idx = np.argmax(a, axis=0)
        return torch.tensor(a[idx]) * 1.0


class Reference(Model):
    def forward(self, x):
        h = self.lin(x)
        return h[h.argmax(dim=0)] * 1.0


def inputs():
    return (torch.randn(5, 4),)
