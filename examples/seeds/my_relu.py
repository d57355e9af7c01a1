"""A custom `autograd.Function` (article: operations vs tensors).

Eager PyTorch: as the article says, x.grad = [0, 1, 0]. Plain `torch.fx` tracing inlines
`MyReLU.apply` and drops the custom backward; fxgrad keeps it as one opaque node.
"""

import torch
from torch import nn
from torch.autograd import Function

EAGER = "ok"


class MyReLU(Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        return torch.clamp(x, min=0)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        grad_x = grad_output.clone()
        grad_x[x <= 0] = 0
        return grad_x


class Model(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MyReLU.apply(x).sum()


def inputs() -> tuple[torch.Tensor]:
    return (torch.tensor([-1.0, 2.0, -3.0], requires_grad=True),)
