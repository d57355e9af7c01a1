"""`torch.cat` of a tensor and a NumPy round trip of it (article: torch.cat and autograd).

Eager PyTorch: `torch.cat` is differentiable; gradients reach `x` only through its direct
path, the NumPy branch silently contributes nothing (the article's own example, tensors made
with `from_numpy(...).requires_grad_()`, gets correct gradients: they are leaves).
"""

import torch
from torch import nn

EAGER = "gradient cut"


class Model(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        doubled = torch.from_numpy(x.detach().numpy() * 2)
        return torch.cat((x, doubled), dim=1).mean()


def inputs() -> tuple[torch.Tensor]:
    return (torch.randn(2, 3, dtype=torch.float64, requires_grad=True),)
