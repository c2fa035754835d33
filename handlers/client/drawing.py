"""Maps drawn straight onto a video's yuv420p planes: ``overlay_on_original``'s picture without leaving YUV.

Blending is linear, so jet x alpha + frame x (1 - alpha) in Y, U and V is the RGB blend converted
(BT.601, limited range: what FFmpeg converts RGB to for the encoder), up to rounding and chroma
subsampling; so are the unseen part's darkening and hatching and the white outline. Drawing on the
decoded planes skips a full-size YUV -> RGB conversion after decoding and RGB -> YUV before encoding.
A chroma sample (one per 2 x 2 pixels) takes the map and each mask (hatch, box, outline) averaged
over the pixels FFmpeg's conversion weighs into it (1-3-3-1 down, 1-1 across); jet's colour of the
averaged map differs from the average of jet's colours only where the map is steep at that scale.

A video's frames share their size and, frame after frame, the box the model saw, so everything that
depends only on those (the bicubic weights, the masks) is worked out once; each frame costs two
small float32 products per plane size, a table lookup and Pillow's C loops.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..render.original import (
    HATCH_GREY,
    JET_STEPS,
    JET_TABLE,
    OUTLINE,
    UNSEEN_KEEP,
    Box,
    bicubic_weights,
    draw_outline,
    hatch_mask,
    placement,
)

BANDS_FROM = 100_000  # samples of a plane from which the product band by band is cheaper (fewer calls below)
Planes = tuple[np.ndarray, np.ndarray, np.ndarray]  # Y (height x width), U and V (half each way), uint8

# RGB -> Y'CbCr, BT.601 limited range (FFmpeg's default for yuv420p): offsets and rows per 255 of R, G, B
_OFFSET = np.array([16.0, 128.0, 128.0])
_MATRIX = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0


def yuv_of(rgb: np.ndarray) -> np.ndarray:
    """RGB values (..., 3) in [0, 255] as Y, U, V (..., 3) floats, as the encoder's conversion gives them."""
    return np.asarray(rgb, dtype=np.float64) @ _MATRIX.T + _OFFSET


def _bytes(values: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


_JET_YUV = _bytes(yuv_of(JET_TABLE))  # JET_STEPS x 3
JET_Y, JET_U, JET_V = (np.ascontiguousarray(_JET_YUV[:, i]) for i in range(3))
OUTLINE_YUV = tuple(int(v) for v in _bytes(yuv_of(np.array(OUTLINE))))


def _unseen_tables(offset: float, grey: float) -> tuple[list[int], list[int]]:
    """Lookup tables of one plane for the unseen part: darkened (toward black), and on a hatch line."""
    level = np.arange(256, dtype=np.float64)
    dimmed = offset + (level - offset) * UNSEEN_KEEP
    hatched = 0.5 * dimmed + 0.5 * grey
    return [int(v) for v in _bytes(dimmed)], [int(v) for v in _bytes(hatched)]


_GREY_YUV = yuv_of(np.full(3, HATCH_GREY))
LUMA_UNSEEN = _unseen_tables(16.0, float(_GREY_YUV[0]))  # (dimmed, hatched)
CHROMA_UNSEEN = _unseen_tables(128.0, 128.0)


def _chroma_rows(values: np.ndarray) -> np.ndarray:
    """Rows (axis 0, even count) to chroma rows as FFmpeg averages them converting RGB to yuv420p:
    1-3-3-1 over rows 2i-1 .. 2i+2 (the edge rows repeated)."""
    padded = np.concatenate([values[:1], values, values[-1:]])
    count = len(values) // 2
    return (padded[0::2][:count] + 3.0 * padded[1::2][:count] + 3.0 * padded[2::2][:count] + padded[3::2][:count]) / 8.0


def _chroma_columns(values: np.ndarray) -> np.ndarray:
    """Columns (axis 1, even count) to chroma columns as FFmpeg averages them: each pair's mean."""
    return (values[:, 0::2] + values[:, 1::2]) / 2.0


def _share(mask: np.ndarray) -> np.ndarray:
    """Per chroma sample, the share (0..255) of its pixels that ``mask`` (even sides) covers."""
    return _bytes(_chroma_rows(_chroma_columns(mask.astype(np.float64))) * 255.0)


def _l_image(values: np.ndarray) -> Image.Image:
    """Values (0..255) as an "L" picture over their buffer (no copy when they are contiguous uint8: a plane)."""
    values = np.ascontiguousarray(values, dtype=np.uint8)
    return Image.frombuffer("L", (values.shape[1], values.shape[0]), values, "raw", "L", 0, 1)


def _bands(across: np.ndarray) -> list[tuple[int, int, int, np.ndarray]]:
    """Runs of columns of a (map columns x columns) bicubic weight matrix that read the same 4 map columns:
    (first column, end column, first map column, their 4 rows of weights); empty when the map has at most 4
    columns, or a column reads more than 4 (then the whole product is taken)."""
    cells, columns = across.shape
    if cells <= 4 or not columns:
        return []
    nonzero = across != 0
    start = np.minimum(nonzero.argmax(axis=0), cells - 4)
    outside = nonzero.copy()
    for offset in range(4):
        outside[start + offset, np.arange(columns)] = False
    if outside.any():
        return []
    edges = [0, *(np.nonzero(np.diff(start))[0] + 1).tolist(), columns]
    runs = itertools.pairwise(edges)
    return [(a, b, int(start[a]), np.ascontiguousarray(across[start[a] : start[a] + 4, a:b])) for a, b in runs]


@dataclass(frozen=True)
class Layer:
    """The map's placement on one plane size: the area it covers and the bicubic weights there."""

    area: tuple[int, int, int, int]  # (left, top, right, bottom) in this plane's samples; empty when right <= left
    down: np.ndarray  # rows x map rows, float32
    across: np.ndarray  # map columns x columns, float32
    bands: list[tuple[int, int, int, np.ndarray]] = field(default_factory=list)  # ``_bands(across)``

    def levels(self, cells: np.ndarray) -> np.ndarray:
        """The map bicubically sampled over ``area``, as indices into the jet tables (uint16).

        Each column reads 4 map columns, so the second product is taken band by band over those only:
        a quarter of the multiplications for a 16-column map (the other weights are zeros). einsum's own
        loops, not BLAS: its threads would spin on the other cores."""
        # the weights of each pixel sum to 1: scaling the map's cells to table steps (+ 0.5 to round) scales every
        # value alike, for 256 multiply-adds instead of two passes over the pixels
        steps = cells * np.float32(JET_STEPS - 1) + np.float32(0.5)
        if not self.bands:
            values = np.einsum("rk,kc->rc", np.einsum("rk,kc->rc", self.down, steps), self.across)
        else:
            half = np.einsum("kr,kc->rc", steps, self.down.T)  # map columns x rows: each band's 4 rows contiguous
            values = np.empty((self.down.shape[0], self.across.shape[1]), dtype=np.float32)
            for first, end, column, weights in self.bands:
                values[:, first:end] = np.einsum("kr,kc->rc", half[column : column + 4], weights)
        np.clip(values, 0.5, JET_STEPS - 0.5, out=values)
        return values.astype(np.uint16)


def _layer(area: tuple[int, int, int, int], down: np.ndarray, across: np.ndarray) -> Layer:
    across = np.ascontiguousarray(across, dtype=np.float32)
    bands = _bands(across) if down.shape[0] * across.shape[1] >= BANDS_FROM else []
    return Layer(area, np.ascontiguousarray(down, dtype=np.float32), across, bands)


@dataclass(frozen=True)
class Unseen:
    """The masks marking what the model did not see (a box short of the whole frame), luma and chroma."""

    hatch: Image.Image  # "L", luma: 255 on the hatch lines
    outline: Image.Image  # "L", luma: 255 on the box's outline
    chroma_hatch: Image.Image  # "L", chroma: the hatch lines' share of each sample
    chroma_outline: Image.Image
    chroma_inside: Image.Image | None  # "L" over the chroma layer's area: the box's share (None: all inside)


@dataclass(frozen=True)
class Layout:
    """What one (frame size, box, map grid) fixes: the map's placement on Y and on U/V, the unseen part's masks."""

    luma: Layer
    chroma: Layer
    unseen: Unseen | None  # None when the box covers every pixel


def layout(frame: tuple[int, int], size: tuple[int, int], box: Box, cells: tuple[int, int]) -> Layout:
    """The layout of a ``cells`` (rows, columns) map in ``box`` on ``frame`` (width, height) frames whose
    ``size`` (even sides) top-left part is drawn."""
    width, height = size
    rows, columns, _, _ = placement(frame, box, cells)
    rows, columns = rows[rows < height], columns[columns < width]
    inside = np.zeros((height, width), dtype=bool)
    area = (0, 0, 0, 0)
    if len(rows) and len(columns):
        area = (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)
        inside[area[1] : area[3], area[0] : area[2]] = True
    x0, y0, x1, y1 = (float(v) for v in box)
    down = bicubic_weights(np.arange(height) + 0.5, y0, y1, cells[0])
    across = bicubic_weights(np.arange(width) + 0.5, x0, x1, cells[1]).T
    luma = _layer(area, down[area[1] : area[3]], across[:, area[0] : area[2]])
    inside_share = _share(inside)
    touched_rows, touched_columns = np.nonzero(inside_share.any(axis=1))[0], np.nonzero(inside_share.any(axis=0))[0]
    chroma_area = (0, 0, 0, 0)
    if len(touched_rows):
        chroma_area = (
            int(touched_columns[0]),
            int(touched_rows[0]),
            int(touched_columns[-1]) + 1,
            int(touched_rows[-1]) + 1,
        )
    left, top, right, bottom = chroma_area
    chroma = _layer(chroma_area, _chroma_rows(down)[top:bottom], _chroma_columns(across)[:, left:right])
    if area == (0, 0, width, height):
        return Layout(luma, chroma, None)
    inside_share = inside_share[top:bottom, left:right]
    hatch = hatch_mask(frame)[:height, :width]
    drawn = Image.new("RGB", frame)
    draw_outline(drawn, box)
    outline = (np.asarray(drawn.convert("L")) > 0)[:height, :width]
    unseen = Unseen(
        _l_image(hatch * 255),
        _l_image(outline * 255),
        _l_image(_share(hatch)),
        _l_image(_share(outline)),
        None if not inside_share.size or inside_share.min() == 255 else _l_image(inside_share),
    )
    return Layout(luma, chroma, unseen)


class FrameDrawer:
    """``overlay_on_original(picture, heatmap, box, alpha)`` drawn on yuv420p planes; safe to share between threads."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self._cached: tuple[tuple[object, ...], Layout] | None = None
        self._lock = threading.Lock()

    def _layout(self, frame: tuple[int, int], size: tuple[int, int], box: Box, cells: tuple[int, int]) -> Layout:
        key = (frame, size, tuple(float(v) for v in box), cells)
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        with self._lock:  # one thread works it out; the others, which came for the same, take it
            cached = self._cached
            if cached is not None and cached[0] == key:
                return cached[1]
            fresh = layout(frame, size, box, cells)
            self._cached = (key, fresh)
        return fresh

    def draw(self, frame: tuple[int, int], source: Planes, heatmap: np.ndarray, box: Box, out: Planes) -> None:
        """Write into ``out`` the ``source`` planes (the top-left even-sided part of a ``frame``-sized picture)
        with the [0, 1] map in jet inside ``box`` and the rest darkened, hatched and outlined (``out`` has the
        planes' size; the two may not overlap)."""
        cells = np.asarray(heatmap, dtype=np.float32)
        size = (source[0].shape[1], source[0].shape[0])
        placed = self._layout(frame, size, box, (cells.shape[0], cells.shape[1]))
        luma_levels = placed.luma.levels(cells) if placed.luma.area[2] > placed.luma.area[0] else None
        chroma_levels = placed.chroma.levels(cells) if placed.chroma.area[2] > placed.chroma.area[0] else None
        for index, (plane, target) in enumerate(zip(source, out, strict=True)):
            luma = index == 0
            layer = placed.luma if luma else placed.chroma
            levels = luma_levels if luma else chroma_levels
            picture = _l_image(plane)
            blended: Image.Image | None = None
            if levels is not None:
                colours = _l_image(np.take((JET_Y, JET_U, JET_V)[index], levels))
                inside = picture if placed.unseen is None else picture.crop(layer.area)
                blended = Image.blend(inside, colours, self.alpha)
            if placed.unseen is None:
                assert blended is not None  # the box covers every pixel
                target[...] = np.asarray(blended)
                continue
            target[...] = np.asarray(self._unseen(picture, blended, layer, placed.unseen, index))

    @staticmethod
    def _unseen(
        picture: Image.Image, blended: Image.Image | None, layer: Layer, unseen: Unseen, index: int
    ) -> Image.Image:
        """One plane darkened and hatched, the blended map pasted into its area, the outline over it."""
        luma = index == 0
        dimmed, hatched = LUMA_UNSEEN if luma else CHROMA_UNSEEN
        result = Image.composite(
            picture.point(hatched), picture.point(dimmed), unseen.hatch if luma else unseen.chroma_hatch
        )
        if blended is not None:
            result.paste(blended, layer.area[:2], None if luma else unseen.chroma_inside)
        result.paste(OUTLINE_YUV[index], (0, 0, *picture.size), unseen.outline if luma else unseen.chroma_outline)
        return result
