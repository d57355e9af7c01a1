"""channels_last inputs whose cat feeds a convolution: the cat and the conv are timed together.

Both inputs are channels_last, so a permuted cat would also apply, but its output would
reach the model's callers (through the conv) in other strides: only `.contiguous()` competes.
"""

import torch


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1024, 4, 1)

    def forward(self, x, y):
        return self.conv(torch.cat([x, y], dim=1))


def inputs():
    x = torch.randn(1, 512, 8, 8).to(memory_format=torch.channels_last)
    y = torch.randn(1, 512, 8, 8).to(memory_format=torch.channels_last)
    return (x, y)


TIMINGS = {"cat:original": 0.8e-3, "cat:contiguous": 0.5e-3}
