"""np.round rounds half to even, like torch.round; then np.clip."""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        pass

    def forward(self, x):
        a = x.detach().numpy()
        q = np.clip(np.round(a * 2) / 2, -1.0, 1.0)
        return torch.from_numpy(q) + x


def inputs():
    return (torch.tensor([[0.25, 0.75, -1.25, 2.0], [1.75, -0.25, 0.1, -3.0]], requires_grad=True),)
