"""InspectionNet: a small all-convolutional classifier with a 16x16 Grad-CAM layer."""

from __future__ import annotations

import torch
from torch import nn

# (out_channels, stride, kernel) of each conv + BatchNorm + ReLU stage. Three stride-2
# stages take a 128 input to 16x16, fine enough for the maps to localise thin scratches.
# The last two stages are 1x1: they mix channels at the 16x16 grid without widening the
# receptive field (23 px instead of 55), so each cell's evidence comes from around that
# cell. With 3x3 kernels there, Grad-CAM peaked in a ring about two cells around thin
# scratches (pointing game 93-96%, see docs/evaluation.md); with 1x1 it peaks on them.
_STAGES = ((16, 2, 3), (32, 2, 3), (32, 1, 3), (64, 2, 3), (64, 1, 1), (64, 1, 1))


class InspectionNet(nn.Module):
    """Conv stages in ``features`` (the Grad-CAM target layer), then global average pool and one linear layer."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels, stride, kernel in _STAGES:
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
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
