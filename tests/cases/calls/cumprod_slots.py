"""`f[i] = f[i - 1] * x[i]` into one preallocated tensor, x requiring grad.

`*` saved `f[i - 1]`, a slot of `f`, and every step writes the next slot; the loop runs
`len(x)` times, so another length is another graph.
"""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        f = torch.zeros_like(x)
        f[0] = x[0]
        for i in range(1, len(x)):
            f[i] = f[i - 1] * x[i]
        return f


class Reference(nn.Module):
    def forward(self, x):
        fs = [x[0]]
        for i in range(1, len(x)):
            fs.append(fs[-1] * x[i])
        return torch.stack(fs)


def inputs(batch=4):
    return (torch.randn(batch, 3, requires_grad=True),)


BATCHES = (6, 2, 1)
