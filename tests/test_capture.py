"""The captured graph computes what eager PyTorch computes: every row of DESIGN section 1."""

from __future__ import annotations

import operator

import torch
from torch import nn

import fxgrad


def _captured(model, *inputs):
    fixed = fxgrad.fix(model, inputs, select=[], verify=True)
    return fixed


def _targets(fixed):
    return [n.target for n in fixed.graph_module.graph.nodes]


class SetItem(nn.Module):
    def forward(self, x):
        y = x * 2
        y[0] = 10
        return y


def test_setitem_is_recorded_and_equal():
    x = torch.randn(3, 4, requires_grad=True)
    fixed = _captured(SetItem(), x)
    assert operator.setitem in _targets(fixed)
    torch.testing.assert_close(fixed(x), SetItem()(x))
