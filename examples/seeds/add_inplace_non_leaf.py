"""`z.add_(x)` on a non-leaf (article: in-place vs out-of-place backprop).

Eager PyTorch: the article says the result "may be incorrect"; it is correct
(x.grad = 2, y.grad = 1): `add` saves nothing for backward, so writing into `z` is safe,
and fxgrad leaves it alone.
"""

import torch
from torch import nn

EAGER = "ok"


class Model(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = x + y
        return z.add_(x)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor([2.0], requires_grad=True), torch.tensor([3.0], requires_grad=True))
