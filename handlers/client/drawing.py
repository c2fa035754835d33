"""Maps drawn over a stream of same-size frames: ``overlay_on_original``'s pixels at a fraction of its CPU.

A video's frames share their size and, frame after frame, the box the model saw, so everything
that depends only on those is worked out once (the bicubic weights, the hatch and outline masks,
the darkening as lookup tables) and each frame costs two small float32 products, one colour
lookup and Pillow's C loops. The result equals ``handlers.render.original.overlay_on_original``
within one colour level (float32 sums may round a map value to the neighbouring one of the
colormap's 4096 steps).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..render.original import (
    HATCH_GREY,
    JET_STEPS,
    JET_TABLE,
    OUTLINE,
    UNSEEN_KEEP,
    Box,
    draw_outline,
    hatch_mask,
    placement,
)

_JET_RGBX = np.concatenate([JET_TABLE, np.zeros((JET_STEPS, 1), np.uint8)], axis=1).view(np.uint32).ravel()


def _unseen_tables() -> tuple[list[int], list[int]]:
    """Per-level lookup tables (R, G and B alike) for ``_unseen``'s darkening, off and on a hatch line."""
    level = np.arange(256, dtype=np.float32)
    dimmed = level * UNSEEN_KEEP
    hatched = 0.5 * dimmed + 0.5 * HATCH_GREY
    return [int(v) for v in (dimmed + 0.5).astype(np.uint8)] * 3, [int(v) for v in (hatched + 0.5).astype(np.uint8)] * 3


DIMMED, HATCHED = _unseen_tables()


@dataclass(frozen=True)
class Layout:
    """What one (frame size, box, map grid) fixes: where the map goes, its weights, the unseen part's masks."""

    area: tuple[int, int, int, int]  # (left, top, right, bottom) of the pixels inside the box; empty when right <= left
    down: np.ndarray  # rows x map rows, float32
    across: np.ndarray  # map columns x columns, float32
    whole: bool  # the box covers every pixel: nothing is marked unseen
    hatch: Image.Image | None  # "L": 255 on the hatch lines (None when ``whole``)
    outline: Image.Image | None  # "L": 255 on the box's outline (None when ``whole``)


def layout(size: tuple[int, int], box: Box, cells: tuple[int, int]) -> Layout:
    """The layout of a ``cells`` (rows, columns) map in ``box`` on ``size`` (width, height) frames."""
    rows, columns, down, across = placement(size, box, cells)
    down, across = down.astype(np.float32), across.astype(np.float32)
    if len(rows) and len(columns):
        area = (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)
    else:
        area = (0, 0, 0, 0)
    whole = area == (0, 0, *size)
    if whole:
        return Layout(area, down, across, True, None, None)
    hatch = Image.fromarray(hatch_mask(size).astype(np.uint8) * 255, mode="L")
    drawn = Image.new("RGB", size)
    draw_outline(drawn, box)
    outline = drawn.convert("L").point(lambda v: 255 if v else 0)
    return Layout(area, down, across, False, hatch, outline)


class FrameDrawer:
    """``overlay_on_original(picture, heatmap, box, alpha)`` for frames of one video; safe to share between threads."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self._cached: tuple[tuple[object, ...], Layout] | None = None
        self._lock = threading.Lock()

    def _layout(self, size: tuple[int, int], box: Box, cells: tuple[int, int]) -> Layout:
        key = (size, tuple(float(v) for v in box), cells)
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        with self._lock:
            fresh = layout(size, box, cells)
            self._cached = (key, fresh)
        return fresh

    def draw(self, picture: Image.Image, heatmap: np.ndarray, box: Box) -> Image.Image:
        """``picture`` (RGB) with the [0, 1] map in jet inside ``box``, the rest darkened, hatched and outlined."""
        cells = np.asarray(heatmap, dtype=np.float32)
        placed = self._layout(picture.size, box, (cells.shape[0], cells.shape[1]))
        left, top, right, bottom = placed.area
        blended: Image.Image | None = None
        if right > left:
            values = np.einsum("rk,kc->rc", np.einsum("rk,kc->rc", placed.down, cells), placed.across)
            np.clip(values, 0.0, 1.0, out=values)
            values *= JET_STEPS - 1
            values += 0.5
            rgbx = np.take(_JET_RGBX, values.astype(np.uint16))
            colours = Image.frombuffer("RGBX", (right - left, bottom - top), rgbx, "raw", "RGBX", 0, 1).convert("RGB")
            inside = picture if placed.whole else picture.crop(placed.area)
            blended = Image.blend(inside, colours, self.alpha)
        if placed.whole:
            assert blended is not None
            return blended
        assert placed.hatch is not None and placed.outline is not None
        result = Image.composite(picture.point(HATCHED), picture.point(DIMMED), placed.hatch)
        if blended is not None:
            result.paste(blended, (left, top))
        result.paste(OUTLINE, (0, 0, *picture.size), placed.outline)
        return result
