"""nn.MultiheadAttention with dropout=0.5: attention weights dropped in train mode only."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True)

    def forward(self, x):
        out, _ = self.attn(x, x, x, need_weights=False)
        return out


def inputs(batch=3):
    return (torch.randn(batch, 5, 8, requires_grad=True),)
