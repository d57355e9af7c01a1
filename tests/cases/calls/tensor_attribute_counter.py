"""A call counter in a plain tensor attribute, bumped in place in forward.

After every call the user's `model.n` must equal eager's: the fixed module updates the
user's attribute, once per call, and probing while deciding never touches it.
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.n = torch.zeros(())

    def forward(self, x):
        self.n.add_(1)
        return x * self.n


def inputs(batch=4):
    return (torch.randn(batch, 3, requires_grad=True),)
