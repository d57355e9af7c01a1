"""`y = h.float(); y.mul_(2)`: on float32 `y` is `h` itself, on float64 a copy.

Decided on float32, the write changes `h` too (sigmoid saved it, so it is rewritten);
called with float64, `h` keeps its values. Output: 4 * sigmoid on float32, 3 * sigmoid on
float64.
"""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        h = torch.sigmoid(x)
        y = h.float()
        y.mul_(2)
        return h + y


def inputs(batch=4):
    return (torch.randn(batch, 5, requires_grad=True),)
