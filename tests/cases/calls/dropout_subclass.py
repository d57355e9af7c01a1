"""A Dropout subclass whose forward calls `super().forward(x)`: random in train, identity in eval."""

import torch
from torch import nn


class Drop(nn.Dropout):
    def forward(self, x):
        return super().forward(x)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.drop = Drop(0.5)

    def forward(self, x):
        h = torch.sigmoid(self.lin(x))
        d = self.drop(h)
        return d * 3


def inputs(batch=4):
    return (torch.randn(batch, 4, requires_grad=True),)
