"""WGAN weight clipping in forward: `w.data.clamp_(-c, c)` after `F.linear(x, w)` saved `w`.

`.data` goes around the version counter, so eager's backward silently uses the clipped
weight for x's gradient. After each call the user's weight must be clipped as in eager,
and x's gradient must be the one with the weight the forward used (Reference).
"""

import torch
import torch.nn.functional as F
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        out = F.linear(x, self.w)
        self.w.data.clamp_(-0.1, 0.1)
        return out


class Reference(Model):
    def forward(self, x):
        out = F.linear(x, self.w.clone())
        self.w.data.clamp_(-0.1, 0.1)
        return out


def inputs(batch=4):
    return (torch.randn(batch, 4, requires_grad=True),)
