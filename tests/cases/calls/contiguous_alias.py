"""`y = h.contiguous()` of a transposed `h`: a copy, except at batch 1, where it is `h`.

`h.t()` of a (1, 5) tensor is contiguous, so `.contiguous()` returns it and the write
reaches `h`; at any other batch size it does not.
"""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        h = torch.sigmoid(x).t()
        y = h.contiguous()
        y.mul_(2)  # sigmoid saved h
        return h + y


def inputs(batch=4):
    return (torch.randn(batch, 5, requires_grad=True),)
