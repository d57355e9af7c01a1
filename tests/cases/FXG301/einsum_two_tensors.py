"""Two tensors leave torch (an input and a weight) and meet in np.einsum."""

import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        w = self.w.detach().numpy()
        a = x.detach().numpy()
        return torch.from_numpy(np.einsum("bi,ij->bj", a, w))


class Reference(Model):
    def forward(self, x):
        dtype = torch.promote_types(x.dtype, self.w.dtype)  # NumPy promotes, torch refuses
        return torch.einsum("bi,ij->bj", x.to(dtype), self.w.to(dtype))


def inputs():
    return (torch.randn(5, 4, requires_grad=True),)
