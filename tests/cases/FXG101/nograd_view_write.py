import torch


class Model(torch.nn.Module):
    def forward(self, x):
        y = x * 2
        with torch.no_grad():
            v = y[0]
        v.mul_(3)  # eager: "A view was created in no_grad mode and is being modified inplace"
        return y * y


class Reference(torch.nn.Module):
    def forward(self, x):
        y = (x * 2).clone()
        y[0] *= 3
        return y * y


def inputs():
    return (torch.randn(3, 4, dtype=torch.float64, requires_grad=True),)
