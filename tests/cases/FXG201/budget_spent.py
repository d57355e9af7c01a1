"""The measuring budget is spent before the cat is timed: left as is, and the report says so.

A timer that answers None has no budget left; a pinned None stands for that.
"""

import torch


class Model(torch.nn.Module):
    def forward(self, x, y):
        return torch.cat([x.t(), y], dim=1)


def inputs():
    return (torch.randn(512, 256, requires_grad=True), torch.randn(256, 512))


TIMINGS = {"cat:original": None, "cat:contiguous": None}
