"""`y = x * 2; y[0] = 10` (article: in-place ops that break gradients).

Eager PyTorch: the article says the gradient "might be incorrect or raise an error"; it is
correct (x.grad = [0, 2, 2]): `mul` by a constant saves nothing that the write destroys,
and autograd records the write (CopySlices). fxgrad leaves it alone. The article's
"mitigation" `y.clone()` is not detached either: gradients flow through it the same way.
"""

import torch
from torch import nn

EAGER = "ok"


class Model(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        y[0] = 10
        return y + 1


def inputs() -> tuple[torch.Tensor]:
    return (torch.tensor([1.0, 2.0, 3.0], requires_grad=True),)
