"""`a[np.arange(n), np.argmax(a, 1)]`: each row's maximum, picked with torch indices."""

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
        return torch.from_numpy(a[np.arange(n), np.argmax(a, 1)])


class Reference(Model):
    def forward(self, x):
        return self.lin(x).amax(dim=1)


def inputs(batch=3):
    return (torch.randn(batch, 4),)
