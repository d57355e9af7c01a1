"""A class holding two tensors with `__call__` (article: gradients of composite tensors).

Eager PyTorch: as the article says, t1, t2 and x all get gradients. The class's
`requires_grad` check reads tensor metadata; fxgrad answers it from the example inputs and
guards the answer in the graph.
"""

import torch
from torch import nn

EAGER = "ok"


class MyCompositeTensor:
    def __init__(self, tensor1: torch.Tensor, tensor2: torch.Tensor) -> None:
        self.tensor1 = tensor1
        self.tensor2 = tensor2
        self.requires_grad = tensor1.requires_grad and tensor2.requires_grad

    def __call__(self, other_tensor: torch.Tensor) -> torch.Tensor:
        if not self.requires_grad:
            raise RuntimeError("Gradients cannot be computed; requires_grad=False.")
        result = torch.matmul(self.tensor1, other_tensor) + self.tensor2
        return torch.sum(result)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.t1 = nn.Parameter(torch.randn(3, 3))
        self.t2 = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MyCompositeTensor(self.t1, self.t2)(x)


def inputs() -> tuple[torch.Tensor]:
    return (torch.randn(3, 1, requires_grad=True),)
