"""A small Fashion-MNIST classifier; its penultimate (128-d) features serve the Fréchet distance."""
from __future__ import annotations

import torch
from torch import nn

from .serialization import PretrainedMixin


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FashionClassifier(nn.Module, PretrainedMixin):
    """Input: (B, 1, 28, 28) in [−1, 1]. ``features`` gives the 128-d penultimate layer, ``forward`` the logits."""

    weights_name = "model.safetensors"

    def __init__(self, num_classes: int = 10, feature_dim: int = 128):
        super().__init__()
        self.config = dict(num_classes=num_classes, feature_dim=feature_dim)
        self.num_features = feature_dim
        self.body = nn.Sequential(_conv(1, 32), _conv(32, 32), nn.MaxPool2d(2),
                                  _conv(32, 64), _conv(64, 64), nn.MaxPool2d(2),
                                  _conv(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(128, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
