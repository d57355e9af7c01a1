"""`add_` on a detached clone that requires grad (article: operations vs tensors).

Eager PyTorch: the article says `backward()` raises; in fact `x_copy.add_(1)` itself raises
"a leaf Variable that requires grad is being used in an in-place operation", in forward.
"""

import torch
from torch import nn

EAGER = "forward raises"


class Model(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_copy = x.clone().detach().requires_grad_(True)
        return x_copy.add_(1)


def inputs() -> tuple[torch.Tensor]:
    return (torch.tensor([2.0], requires_grad=True),)
