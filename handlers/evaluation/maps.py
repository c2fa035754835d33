"""Arithmetic on explanation maps shared by the evaluations: normalising and scoring against masks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# A map whose value range is below this fraction of its largest magnitude is treated as
# constant: min-max normalisation would only amplify rounding noise.
DEGENERATE_SPREAD = 1e-3


def minmax(values: torch.Tensor) -> torch.Tensor:
    """Scale each map (last two dims) to [0, 1]; a constant map becomes all zeros."""
    flat = values.flatten(-2).double()
    low = flat.min(-1, keepdim=True).values
    spread = flat.max(-1, keepdim=True).values - low
    scaled = torch.where(spread > 0, (flat - low) / spread.clamp_min(1e-300), torch.zeros_like(flat))
    return scaled.view(values.shape)


def is_degenerate(values: torch.Tensor) -> bool:
    """True for an all-zero or near-constant map, where min-max scaling says nothing."""
    peak = float(values.abs().max())
    return peak == 0.0 or float(values.max() - values.min()) <= DEGENERATE_SPREAD * peak


def mask_to_grid(mask: np.ndarray | torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Downsample a pixel mask to a map grid: a cell is in the mask when any of its pixels is."""
    pixels = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return F.adaptive_max_pool2d(pixels, grid)[0, 0] > 0


def dilate(cells: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Grow a boolean grid mask by ``radius`` cells in all eight directions."""
    grown = F.max_pool2d(cells.float()[None, None], 2 * radius + 1, stride=1, padding=radius)
    return grown[0, 0] > 0


def tolerance_region(mask: np.ndarray | torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """The mask on the map grid, dilated by one cell: the pointing-game tolerance."""
    return dilate(mask_to_grid(mask, grid))


def to_resolution(cells: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """A grid mask at pixel resolution (each cell becomes its block), to score input-size maps."""
    return F.interpolate(cells.float()[None, None], size=size, mode="nearest")[0, 0] > 0


def points_into(values: torch.Tensor, region: torch.Tensor) -> bool:
    """Pointing game: whether the map's maximum lies in ``region``; an all-zero map points nowhere."""
    if float(values.max()) <= 0.0:
        return False
    return bool(region.flatten()[int(values.argmax())])


def energy_share(values: torch.Tensor, region: torch.Tensor) -> float:
    """Share of a non-negative map's mass inside ``region``; 0 for an all-zero map."""
    total = float(values.sum())
    return float(values[region].sum()) / total if total > 0 else 0.0
