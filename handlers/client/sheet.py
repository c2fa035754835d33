"""One contact sheet per image: input | probability bars | Grad-CAM overlay | Guided Grad-CAM.

With several targets, each gets its own row of Grad-CAM | Guided Grad-CAM under the first
(the input and the bars are drawn once, in the first row), as in the Grad-CAM paper's figures.

Drawn with PIL (the bar chart with ``ImageDraw``, no plotting library). The guided map is
shown as a grayscale picture by ``handlers.render``, contrast-stretched to its 99.5th
percentile: guided maps are sparse, and a few peaks would otherwise leave the rest black.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..render.images import grayscale

PANEL = 224  # side of each square panel, in pixels
MARGIN = 12
TITLE = 24  # height of the title strip above each panel
FOOTER = 22  # height of the caption line under the panels
STRETCH_QUANTILE = 0.995
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
BAR = (70, 130, 180)
TOP_BAR = (214, 39, 40)
TRACK = (232, 232, 232)


@dataclass(frozen=True)
class TargetMaps:
    """Both maps of one explained class."""

    label: str
    gradcam: Image.Image  # the server's jet overlay (format=overlay)
    guided: Sequence[Sequence[float]]  # the raw Guided Grad-CAM map (format=raw)


@dataclass(frozen=True)
class Panels:
    """What one sheet shows: the uploaded image, the server's predictions and both maps of each target."""

    source: Image.Image
    title: str
    predictions: Sequence[dict[str, Any]]
    targets: Sequence[TargetMaps]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _fit(text: str, draw: ImageDraw.ImageDraw, font: Any, width: int) -> str:
    """``text`` cut with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _square(image: Image.Image, resample: Image.Resampling = Image.Resampling.BILINEAR) -> Image.Image:
    """``image`` scaled to fit a PANEL x PANEL square, centred on white."""
    fitted = ImageOps.contain(image.convert("RGB"), (PANEL, PANEL), method=resample)
    square = Image.new("RGB", (PANEL, PANEL), BACKGROUND)
    square.paste(fitted, ((PANEL - fitted.width) // 2, (PANEL - fitted.height) // 2))
    return square


def guided_picture(values: Sequence[Sequence[float]]) -> Image.Image:
    """Grayscale picture of a non-negative guided map, white = strongest evidence."""
    array = torch.tensor(values, dtype=torch.float32).clamp(min=0)
    scale = float(torch.quantile(array.flatten(), STRETCH_QUANTILE)) or float(array.max())
    return grayscale(array / scale if scale > 0 else array)


def probability_bars(predictions: Sequence[dict[str, Any]]) -> Image.Image:
    """Horizontal bars, most probable first (highlighted), label left and percentage right."""
    panel = Image.new("RGB", (PANEL, PANEL), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    font = _font(13)
    rows = list(predictions)[: max(1, PANEL // 24)]
    row = min(40, PANEL // max(1, len(rows)))
    label_width, value_width = PANEL * 3 // 10, 48
    bar_width = PANEL - label_width - value_width - 8
    for position, prediction in enumerate(rows):
        top = position * row + (PANEL - row * len(rows)) // 2
        middle = top + row // 2
        probability = min(max(float(prediction["probability"]), 0.0), 1.0)
        draw.text(
            (2, middle), _fit(str(prediction["label"]), draw, font, label_width - 6), fill=INK, font=font, anchor="lm"
        )
        left, height = label_width, max(6, row * 6 // 10)
        draw.rectangle((left, middle - height // 2, left + bar_width, middle + height // 2), fill=TRACK)
        filled = round(bar_width * probability)
        if filled:
            draw.rectangle(
                (left, middle - height // 2, left + filled, middle + height // 2),
                fill=TOP_BAR if position == 0 else BAR,
            )
        draw.text((PANEL - 2, middle), f"{probability:.1%}", fill=INK, font=font, anchor="rm")
    return panel


def render_sheet(panels: Panels) -> Image.Image:
    """Four panel columns with titles, one row per target, and the file name as a caption."""
    source = ImageOps.exif_transpose(panels.source)
    rows: list[list[tuple[str, Image.Image] | None]] = []
    for position, maps in enumerate(panels.targets):
        first: list[tuple[str, Image.Image] | None] = (
            [("input", _square(source)), ("probabilities", probability_bars(panels.predictions))]
            if position == 0
            else [None, None]
        )
        rows.append(
            [
                *first,
                (f"Grad-CAM: {maps.label}", _square(maps.gradcam)),
                (f"Guided Grad-CAM: {maps.label}", _square(guided_picture(maps.guided), Image.Resampling.NEAREST)),
            ]
        )
    columns, row_height = 4, TITLE + PANEL + MARGIN
    width = columns * PANEL + (columns + 1) * MARGIN
    sheet = Image.new("RGB", (width, MARGIN + len(rows) * row_height + FOOTER), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    title_font, caption_font = _font(15), _font(12)
    for row, pictures in enumerate(rows):
        top = MARGIN + row * row_height
        for column, cell in enumerate(pictures):
            if cell is None:
                continue
            title, picture = cell
            left = MARGIN + column * (PANEL + MARGIN)
            draw.text(
                (left + PANEL // 2, top + TITLE // 2),
                _fit(title, draw, title_font, PANEL),
                fill=INK,
                font=title_font,
                anchor="mm",
            )
            sheet.paste(picture, (left, top + TITLE))
            draw.rectangle((left - 1, top + TITLE - 1, left + PANEL, top + TITLE + PANEL), outline=(200, 200, 200))
    draw.text(
        (MARGIN, sheet.height - MARGIN - FOOTER + FOOTER // 2 + 2),  # under the last row of panels
        _fit(panels.title, draw, caption_font, width - 2 * MARGIN),
        fill=(90, 90, 90),
        font=caption_font,
        anchor="lm",
    )
    return sheet
