"""`q.mul_(2); return k`: decided with two tensors, then called as fixed(x, x).

With one tensor for both arguments `k` is `q`, and eager returns the doubled values.
"""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, q, k):
        q.mul_(2)
        return k * 1


def inputs(batch=4):
    return (torch.randn(batch, 3), torch.randn(batch, 3))
