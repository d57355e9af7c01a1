"""The measuring budget is spent before the cat is timed: left as is, and the report says so.

`Context.timed` answers None once the budget is spent; a pinned None stands for that.
"""

import torch


class Model(torch.nn.Module):
    def forward(self, x, y):
        return torch.cat([x.t(), y], dim=1)


def inputs():
    return (torch.randn(8, 4, requires_grad=True), torch.randn(4, 8))


TIMINGS = {"cat:original": None, "cat:contiguous": None}
