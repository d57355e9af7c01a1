"""Two small models: one autograd-safe, one with an unsafe in-place write."""

import torch
from torch import nn


class TinyClassifier(nn.Module):
    """Safe: the in-place ReLU writes the batch norm's output, which nothing saved."""

    def __init__(self, features: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, 32)
        self.bn = nn.BatchNorm1d(32)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.bn(self.fc1(x))))


class GatedScorer(nn.Module):
    """Unsafe: `sigmoid` saved its output for backward, and `gate.mul_(2)` overwrites it."""

    def __init__(self, features: int = 16) -> None:
        super().__init__()
        self.gate = nn.Linear(features, features)
        self.score = nn.Linear(features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(x))
        # Backward fails here: "modified by an inplace operation".
        gate.mul_(2)
        return self.score(gate * x)
