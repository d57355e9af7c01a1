"""A write through the view `t = a.T` reaches `a`: written on a clone, permuted back."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        a = h.detach().numpy() * 1
        t = a.T
        t[0] = 0
        return torch.from_numpy(a)


class Reference(Model):
    def forward(self, x):
        h = self.lin(x)
        return torch.cat([torch.zeros_like(h[:, :1]), h[:, 1:]], dim=1)


def inputs(batch=3):
    return (torch.randn(batch, 4),)
