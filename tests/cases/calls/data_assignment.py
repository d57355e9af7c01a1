"""`self.w.data = self.w.data * 0.5` after `F.linear(x, self.w)` saved `w`.

Assigning `.data` gives the weight new memory rather than writing the old one, so what
`F.linear` saved keeps the values the forward used: nothing to rewrite. The assignment
must still land on the user's weight after each call, as in eager, and x's gradient must
use the weight the forward used (Reference).
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
        self.w.data = self.w.data * 0.5
        return out


class Reference(Model):
    def forward(self, x):
        out = F.linear(x, self.w.clone())
        self.w.data = self.w.data * 0.5
        return out


def inputs(batch=4):
    return (torch.randn(batch, 4, requires_grad=True),)
