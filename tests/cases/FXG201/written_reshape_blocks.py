"""A reshape of the cat's output is written in place: its aliasing depends on strides.

`reshape` returns a view of a contiguous output but a copy of a permuted or channels_last
one, so the write reaches `h` or not. Neither rewrite may change that: left as is, untimed.
"""

import torch


class Model(torch.nn.Module):
    def forward(self, x, y):
        h = torch.cat([x, y], dim=1)
        flat = h.reshape(h.shape[0], -1)
        flat.mul_(2)
        return h + 1, flat


def inputs():
    x = torch.randn(2, 16, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randn(2, 16, 32, 32).to(memory_format=torch.channels_last)
    return (x, y)


TIMINGS: dict[str, float] = {}
