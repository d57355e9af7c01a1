"""A forward hook on an `nn.ReLU(inplace=True)` that follows a sigmoid.

sigmoid saved its output, so the in-place ReLU is rewritten; the hook must still run once
per call (not during fxgrad's probing) and see the values eager's hook sees.
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=True)
        self.seen = []
        self.act.register_forward_hook(self._record)

    def _record(self, module, args, output):
        self.seen.append(output.detach().clone())

    def forward(self, x):
        h = torch.sigmoid(self.lin(x))
        return self.act(h) * 2


class Reference(Model):
    def forward(self, x):
        h = torch.sigmoid(self.lin(x))
        return self.act(h.clone()) * 2


def inputs(batch=4):
    return (torch.randn(batch, 4, requires_grad=True),)


def observe(model):
    """What the hook saw, call by call."""
    return list(model.seen)
