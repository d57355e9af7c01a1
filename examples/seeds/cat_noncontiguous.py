"""`torch.cat` of non-contiguous slices (article: torch.cat and autograd).

Eager PyTorch: gradients are correct. The article says the concatenated `x` "will return
False" for `is_contiguous()`: it is True, because `cat` writes a new contiguous tensor;
only the slice `x[:, ::2]` is non-contiguous. Whether `.contiguous()` first pays off is
measured, not assumed (pass FXG201).
"""

import torch
from torch import nn

EAGER = "ok"


class Model(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x[:, ::2]
        x = torch.cat((x, x[:, 1:]), dim=1)
        return torch.cat((x, y), dim=1).mean()


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True))
