"""A buffer scaled through `.data` after `*` saved it: module state, and a wrong gradient.

The buffer must move as in eager on every call; x's gradient must use the value the
forward multiplied by (Reference), not the bumped one.
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x):
        y = x * self.scale
        self.scale.data.mul_(1.5)
        return y


class Reference(Model):
    def forward(self, x):
        y = x * self.scale.clone()
        self.scale.data.mul_(1.5)
        return y


def inputs(batch=4):
    return (torch.randn(batch, 4, requires_grad=True),)
