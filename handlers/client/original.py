"""``--on original``: each map drawn over the user's own picture at its own size, from the answer's geometry.

The server says which box of the upright original its model saw (``geometry``); the client
opens the same file upright (EXIF orientation applied, as the server does) and draws the
map's grid into that box (``handlers.render.original``). Should the client read the picture
at another size than the server reported, the box is scaled to it.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..render.original import Box, overlay_on_original, peak
from .api import ApiError


def open_upright(data: bytes) -> Image.Image:
    """The first frame of an image file as upright RGB (EXIF orientation applied); OSError when unreadable."""
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        upright = ImageOps.exif_transpose(image)
        return upright.convert("RGB")


def placed_box(answer: dict[str, Any], size: tuple[int, int]) -> Box:
    """The answer's box, in pixels of a picture of ``size``; ApiError when the answer has no geometry."""
    try:
        geometry = answer["geometry"]
        width, height = (float(v) for v in geometry["original_size"])
        x0, y0, x1, y1 = (float(v) for v in geometry["box"])
    except (KeyError, TypeError, ValueError):
        raise ApiError("the answer has no geometry: the server's handler predates --on original") from None
    scale_x, scale_y = size[0] / width, size[1] / height
    return (x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y)


def heatmap_of(entry: dict[str, Any]) -> np.ndarray:
    """The grid of one explanation as an array; ApiError when it came in another format."""
    if "heatmap" not in entry:
        raise ApiError(f"explanation '{entry.get('method')}' has no heatmap grid (format {entry.get('format')!r})")
    return np.asarray(entry["heatmap"], dtype=np.float64)


def draw(picture: Image.Image, answer: dict[str, Any], entry: dict[str, Any], alpha: float) -> Image.Image:
    """One explanation of ``answer`` drawn over ``picture`` (the upright original)."""
    return overlay_on_original(picture, heatmap_of(entry), placed_box(answer, picture.size), alpha)


def peak_on_original(answer: dict[str, Any], entry: dict[str, Any]) -> tuple[float, float]:
    """Where one explanation's map is highest, in pixels of the original the server received."""
    geometry = answer.get("geometry") or {}
    size = geometry.get("original_size")
    if not size:
        raise ApiError("the answer has no geometry: the server's handler predates original-size overlays")
    return peak(heatmap_of(entry), placed_box(answer, (int(size[0]), int(size[1]))))
