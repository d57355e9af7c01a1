"""A residual block with nothing for fxgrad to rewrite.

The `ReLU(inplace=True)` after each batch norm is safe: batch norm's backward needs its
input, not its output, so overwriting the output destroys nothing autograd saved, and
the in-place form saves memory. Try `fxgrad check examples/safe_resnet_block.py:Block`.
"""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + x)


def inputs() -> tuple[torch.Tensor]:
    return (torch.randn(2, 8, 16, 16),)
