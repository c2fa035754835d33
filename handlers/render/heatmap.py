"""Heatmap arithmetic: scale to [0, 1], resize, round into a JSON-friendly grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalise(values: torch.Tensor) -> torch.Tensor:
    """Divide a non-negative map by its maximum: 0 keeps meaning 'no evidence'.

    An all-zero map (the class has no positive evidence at this layer) stays all zero.
    """
    peak = values.max()
    return values / peak if peak > 0 else torch.zeros_like(values)


def resize_map(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of an h x w map to ``size`` (smooth, as Grad-CAM overlays are usually drawn)."""
    if tuple(values.shape) == tuple(size):
        return values
    return F.interpolate(values[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
