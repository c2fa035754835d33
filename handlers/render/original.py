"""A map drawn over the original-size image: bicubic into the box the model saw, the rest marked unseen.

The answer's ``geometry`` says which box of the uploaded (upright) image the model saw; the
map covers exactly that box. It is upsampled with PyTorch's bicubic kernel (a = -0.75,
half-pixel centres, edge cells repeated), written as two small matrices so that a box with
fractional corners and any image size cost only (rows x cells) + (cells x columns) work,
and the viewer can do the same sums in JavaScript. Outside the box the image stays visible,
darkened and hatched, with the box outlined: the model never saw those pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .colormap import jet

CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic coefficient
UNSEEN_KEEP = 0.45  # brightness kept outside the box
HATCH_PERIOD = 12  # pixels between the diagonal hatch lines outside the box
HATCH_WIDTH = 2
HATCH_GREY = 160.0
OUTLINE = (255, 255, 255)
OUTLINE_WIDTH = 2

JET_STEPS = 4096  # the colormap looked up at this many levels (within one colour level of jet itself)
JET_TABLE = jet(np.linspace(0.0, 1.0, JET_STEPS))

Box = Sequence[float]  # (x0, y0, x1, y1) in pixels of the original


def _cubic(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``t``."""
    t = np.abs(t)
    near = ((CUBIC_A + 2) * t - (CUBIC_A + 3)) * t * t + 1
    far = ((CUBIC_A * t - 5 * CUBIC_A) * t + 8 * CUBIC_A) * t - 4 * CUBIC_A
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def bicubic_weights(centres: np.ndarray, start: float, end: float, cells: int) -> np.ndarray:
    """(len(centres) x cells) weights sampling a ``cells``-long map laid over [start, end) at pixel ``centres``.

    Each pixel reads four cells around its position (clamped to the map's edge cells, as PyTorch
    does); for a box on whole pixels this is ``F.interpolate(mode="bicubic", align_corners=False)``.
    """
    position = (centres - start) / (end - start) * cells - 0.5  # in cell units, cell centres at integers
    base = np.floor(position)
    weights = np.zeros((len(centres), cells), dtype=np.float64)
    rows = np.arange(len(centres))
    for offset in (-1, 0, 1, 2):
        index = base + offset
        np.add.at(weights, (rows, np.clip(index, 0, cells - 1).astype(np.int64)), _cubic(position - index))
    return weights


def _inside(start: float, end: float, size: int) -> np.ndarray:
    """Pixel indices of one axis whose centres fall in [start, end), within the image."""
    first = max(0, int(np.ceil(start - 0.5)))
    last = min(size, int(np.ceil(end - 0.5)))
    return np.arange(first, max(first, last))


def placement(
    size: tuple[int, int], box: Box, cells: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where a ``cells`` (rows, columns) map in ``box`` lands on a ``size`` (width, height) image:
    (row indices, column indices, rows x map rows weights, map columns x columns weights)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    columns, rows = _inside(x0, x1, size[0]), _inside(y0, y1, size[1])
    down = bicubic_weights(rows + 0.5, y0, y1, cells[0])
    across = np.ascontiguousarray(bicubic_weights(columns + 0.5, x0, x1, cells[1]).T)
    return rows, columns, down, across


def upsample(heatmap: np.ndarray, box: Box, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The map bicubically resampled onto the pixels of a ``size`` (width, height) image inside ``box``.

    Returns (row indices, column indices, values in [0, 1] of shape rows x columns).
    """
    rows, columns, down, across = placement(size, box, heatmap.shape[:2])
    # einsum's own single-threaded loops (BLAS threads only spin on a busy machine), on contiguous operands
    half = np.einsum("rk,kc->rc", down, np.asarray(heatmap, dtype=np.float64))
    values = np.einsum("rk,kc->rc", half, across)
    return rows, columns, np.clip(values, 0.0, 1.0)


def hatch_mask(size: tuple[int, int]) -> np.ndarray:
    """Where the thin diagonal lines marking unseen pixels fall on a ``size`` (width, height) image."""
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    return ((xx + yy) % HATCH_PERIOD) < HATCH_WIDTH


def _unseen(picture: Image.Image) -> Image.Image:
    """The picture darkened and hatched with thin diagonal lines: visible, plainly not explained."""
    base = np.asarray(picture, dtype=np.float32)
    hatch = hatch_mask(picture.size)
    dimmed = base * UNSEEN_KEEP
    dimmed[hatch] = 0.5 * dimmed[hatch] + 0.5 * HATCH_GREY
    return Image.fromarray((dimmed + 0.5).astype(np.uint8))  # values in [0, 255]: truncating rounds


def draw_outline(picture: Image.Image, box: Box) -> None:
    """Draw the box's border (clipped to the picture) in place, ``OUTLINE_WIDTH`` pixels inside the box."""
    width, height = picture.size
    x0, y0, x1, y1 = (int(np.floor(float(v) + 0.5)) for v in box)  # halves up, as the viewer's Math.round
    left, right = max(0, x0), min(width, x1)
    top, bottom = max(0, y0), min(height, y1)
    if left >= right or top >= bottom:
        return
    draw = ImageDraw.Draw(picture)
    for edge, shown in ((x0, 0 <= x0 < width), (x1 - OUTLINE_WIDTH, 0 < x1 <= width)):
        if shown:
            start = max(0, edge)
            draw.rectangle((start, top, min(width, start + OUTLINE_WIDTH) - 1, bottom - 1), fill=OUTLINE)
    for edge, shown in ((y0, 0 <= y0 < height), (y1 - OUTLINE_WIDTH, 0 < y1 <= height)):
        if shown:
            start = max(0, edge)
            draw.rectangle((left, start, right - 1, min(height, start + OUTLINE_WIDTH) - 1), fill=OUTLINE)


def overlay_on_original(image: Image.Image, heatmap: np.ndarray, box: Box, alpha: float = 0.5) -> Image.Image:
    """``image`` (the original, upright) with the [0, 1] map in jet at ``alpha`` inside ``box``.

    Pixels outside the box are kept but darkened and hatched, and the box is outlined (when
    the box covers the whole image, as for models that resize without cropping, neither is drawn).
    The blend is Pillow's (``Image.blend``: C, each value truncated), the rest numpy.
    """
    picture = image.convert("RGB")
    rows, columns, values = upsample(np.asarray(heatmap, dtype=np.float64), box, picture.size)
    if not (len(rows) and len(columns)):
        result = _unseen(picture)
        draw_outline(result, box)
        return result
    colours = Image.fromarray(np.take(JET_TABLE, np.floor(values * (JET_STEPS - 1) + 0.5).astype(np.intp), axis=0))
    if len(rows) == picture.height and len(columns) == picture.width:
        return Image.blend(picture, colours, alpha)  # a box over the whole image leaves nothing unseen
    area = (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)
    result = _unseen(picture)
    result.paste(Image.blend(picture.crop(area), colours, alpha), area[:2])
    draw_outline(result, box)
    return result


def peak(heatmap: np.ndarray, box: Box) -> tuple[float, float]:
    """Where the map is highest, in the original's pixels: the centre of its hottest cell (the first, on ties)."""
    cells = np.asarray(heatmap)
    row, column = np.unravel_index(int(np.argmax(cells)), cells.shape)
    x0, y0, x1, y1 = (float(v) for v in box)
    return (
        x0 + (column + 0.5) / cells.shape[1] * (x1 - x0),
        y0 + (row + 0.5) / cells.shape[0] * (y1 - y0),
    )
