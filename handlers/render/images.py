"""Pictures of a map: grayscale PNG and the jet overlay on the image the model saw."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import torch
from PIL import Image

from .colormap import jet
from .heatmap import resize_map


def png_base64(image: Image.Image) -> str:
    """PNG-encode ``image`` and return it as base64 text for JSON."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def grayscale(heatmap: torch.Tensor) -> Image.Image:
    """An 8-bit grayscale picture of a [0, 1] map (white = highest)."""
    array = (heatmap.detach().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array, mode="L")


def overlay(image: Image.Image, heatmap: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """``image`` with the jet-coloured [0, 1] map blended on top at ``alpha``.

    The map is upsampled bilinearly to the image size first.
    """
    width, height = image.size
    upsampled = resize_map(heatmap.detach().cpu().float(), (height, width)).clamp(0, 1).numpy()
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1.0 - alpha) * base + alpha * jet(upsampled).astype(np.float32)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), mode="RGB")


TILE_GAP = 1  # pixels of black between tiles


def tiles(maps: list[torch.Tensor]) -> tuple[Image.Image, tuple[int, int]]:
    """A grayscale mosaic of [0, 1] maps of one size, row by row in a near-square grid.

    Returns the picture and its (rows, columns), as the layer-activation figures show channels.
    """
    columns = math.ceil(math.sqrt(len(maps)))
    rows = math.ceil(len(maps) / columns)
    height, width = maps[0].shape
    mosaic = Image.new("L", (columns * (width + TILE_GAP) - TILE_GAP, rows * (height + TILE_GAP) - TILE_GAP))
    for i, values in enumerate(maps):
        row, column = divmod(i, columns)
        mosaic.paste(grayscale(values), (column * (width + TILE_GAP), row * (height + TILE_GAP)))
    return mosaic, (rows, columns)
