"""A forward hook on an nn.Linear that nothing rewrites: it runs once per call.

Deciding runs the model several times on private copies of its state; the user's hooks,
and whatever they record, must see only the user's own calls.
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.seen = []
        self.lin.register_forward_hook(self._record)

    def _record(self, module, args, output):
        self.seen.append(output.detach().clone())

    def forward(self, x):
        return torch.relu(self.lin(x))


def inputs(batch=4):
    return (torch.randn(batch, 4, requires_grad=True),)


def observe(model):
    """What the hook saw, call by call."""
    return list(model.seen)
