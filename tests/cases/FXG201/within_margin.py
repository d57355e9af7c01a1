"""A transposed cat input left alone: .contiguous() is faster, but not by the 1.10x margin."""

import torch


class Model(torch.nn.Module):
    def forward(self, x, y):
        a = x.transpose(0, 1)
        return torch.cat([a, y], dim=0)


def inputs():
    return (torch.randn(512, 256, requires_grad=True), torch.randn(256, 512, requires_grad=True))


TIMINGS = {"cat:original": 0.105e-3, "cat:contiguous": 0.100e-3}
