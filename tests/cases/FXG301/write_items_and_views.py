"""`a[0] = 1`, `a += 1`, `a[:, 1] += 2`: later readers of `a` and of its view `v` see them."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        a = h.detach().numpy() * 1.0
        v = a[:, 0]  # a view: it sees every write into a below
        a[0] = 1.0
        a += 1
        a[:, 1] += 2
        a[:, 3] = a[:, 2]
        return torch.from_numpy(v * 3), torch.from_numpy(a)


class Reference(Model):
    def forward(self, x):
        a = self.lin(x) * 1.0
        a = torch.cat([torch.ones_like(a[:1]), a[1:]]) + 1
        a = torch.stack([a[:, 0], a[:, 1] + 2, a[:, 2], a[:, 2]], dim=1)
        return a[:, 0] * 3, a


def inputs(batch=3):
    return (torch.randn(batch, 4),)
