"""InspectionNet: a small all-convolutional classifier with a 16x16 Grad-CAM layer."""

from __future__ import annotations

import torch
from torch import nn

# (out_channels, stride) of each conv3x3 + BatchNorm + ReLU stage. Three stride-2 stages
# take a 128 input to 16x16, fine enough for the maps to localise thin scratches.
_STAGES = ((16, 2), (32, 2), (32, 1), (64, 2), (64, 1), (64, 1))


class InspectionNet(nn.Module):
    """Conv stages in ``features`` (the Grad-CAM target layer), then global average pool and one linear layer."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels, stride in _STAGES:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))
