"""A small model with one unsafe in-place write and one safe one.

Eager PyTorch: backward fails with "one of the variables needed for gradient computation
has been modified by an inplace operation": `sigmoid` saved its output, `h.mul_(2)`
overwrites it. The `relu_` after the linear layer is safe (nothing saved its input) and
fxgrad keeps it.
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x).relu_()  # safe: nothing saved the linear layer's output
        h = torch.sigmoid(h)
        h.mul_(2)  # unsafe: sigmoid saved h for its backward
        return self.fc2(h)


def inputs() -> tuple[torch.Tensor]:
    return (torch.randn(4, 8),)
