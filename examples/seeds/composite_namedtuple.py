"""A namedtuple "composite tensor" as input (article: gradients of composite tensors).

Eager PyTorch: as the article says, both members get gradients. fxgrad flattens the
namedtuple into its tensors and rebuilds it, so the fixed model takes the same argument.
"""

from collections import namedtuple

import torch
from torch import nn

EAGER = "ok"

CompositeTensor = namedtuple("CompositeTensor", ["tensor1", "tensor2"])


class Model(nn.Module):
    def forward(self, comp: CompositeTensor) -> torch.Tensor:
        return torch.sum((comp.tensor1 + comp.tensor2) ** 2)


def inputs() -> tuple[CompositeTensor]:
    return (
        CompositeTensor(torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)),
    )
