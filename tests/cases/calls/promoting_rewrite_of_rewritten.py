"""Two rewrites in a row, the second promoting: `f.add_(h)` with `f` float32, `h` float64.

`h.mul_(2)` is rewritten (sigmoid saved `h`), then `f.add_(h)` (sigmoid saved `f`) on
float64 inputs, where `f = sigmoid(h.float())` is float32: in place the sum stays float32,
out of place it promotes, so the rewrite must cast back, as it does when `h` was not
itself rewritten (promoting_rewrite_cast). On float32 inputs nothing promotes.
"""

import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x):
        h = torch.sigmoid(x * 2)
        h.mul_(2)
        f = torch.sigmoid(h.float())
        f.add_(h)
        return f


class Reference(nn.Module):
    def forward(self, x):
        h = torch.sigmoid(x * 2) * 2
        f = torch.sigmoid(h.float())
        return (f + h).to(f.dtype)


def inputs(batch=4):
    return (torch.randn(batch, 3, requires_grad=True),)
