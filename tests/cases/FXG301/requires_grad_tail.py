"""from_numpy(...).requires_grad_(): the gradient now flows to the layer."""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x):
        h = self.lin(x)
        t = torch.from_numpy(np.tanh(h.detach().numpy())).requires_grad_()
        return t * 2


class Reference(Model):
    def forward(self, x):
        return torch.tanh(self.lin(x)) * 2


def inputs():
    return (torch.randn(5, 4),)
