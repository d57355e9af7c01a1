"""`x.add_(y)` on leaves that require grad (article: in-place vs out-of-place backprop).

Eager PyTorch: the article says this backpropagates correctly; in fact `add_` raises
"a leaf Variable that requires grad is being used in an in-place operation".
"""

import torch
from torch import nn

EAGER = "forward raises"


class Model(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.add_(y)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor([2.0], requires_grad=True), torch.tensor([3.0], requires_grad=True))
