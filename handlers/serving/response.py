"""Build the JSON answer of one image: top-k predictions + its explanations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..engine import METHODS, Explanation, SampleResult
from ..preprocess import Box
from ..render import normalise, overlay, png_base64, resize_map, tiles
from ..render.images import grayscale
from .faithfulness import faithfulness_entry
from .options import RequestOptions

PROBABILITY_DIGITS = 4  # significant digits: small probabilities stay visible (3.2e-05)
HEATMAP_DECIMALS = 3
RAW_SIGNIFICANT = 6
BOX_DECIMALS = 2  # hundredths of a pixel of the uploaded image
_SCALE = 10**HEATMAP_DECIMALS
# The JSON text of every value a grid heatmap holds (thousandths from 0 to 1), followed by what
# comes after it: "," inside a row, "],[" at a row's end, nothing at the grid's end. json.dumps
# formats each float with repr, 256 of them for a 16 x 16 map; picking texts by index is faster.
_TEXTS = [repr(k / _SCALE) for k in range(_SCALE + 1)]
_TOKENS = np.array([t + "," for t in _TEXTS] + [t + "],[" for t in _TEXTS] + _TEXTS, dtype=object)
_ENDINGS: dict[tuple[int, ...], np.ndarray] = {}  # per grid shape: which of the three each value takes


class Grid(list[list[float]]):
    """A grid heatmap: rows of values rounded to HEATMAP_DECIMALS (a list, the answer's contract),
    and its compact JSON text made from the same thousandths (None when one is outside 0..1)."""

    def __init__(self, rows: list[list[float]], text: str | None) -> None:
        super().__init__(rows)
        self.text = text


def _endings(shape: tuple[int, ...]) -> np.ndarray:
    if shape not in _ENDINGS:
        endings = np.zeros(shape, dtype=np.intp)
        endings[:, -1] = _SCALE + 1
        endings[-1, -1] = 2 * (_SCALE + 1)
        _ENDINGS[shape] = endings.ravel()
    return _ENDINGS[shape]


def grid(heatmap: torch.Tensor) -> Grid:
    """The heatmap's values rounded to HEATMAP_DECIMALS (np.round's own arithmetic: rint of value x
    1000, divided by 1000), with the JSON text of those values (a negative zero written 0.0)."""
    thousandths = np.rint(heatmap.detach().cpu().numpy().astype(np.float64) * _SCALE)
    rows = (thousandths / _SCALE).tolist()
    if thousandths.ndim != 2 or not thousandths.size or not 0 <= thousandths.min() <= thousandths.max() <= _SCALE:
        return Grid(rows, None)  # NaN fails the comparison too
    picked = _TOKENS[thousandths.astype(np.intp).ravel() + _endings(thousandths.shape)]
    return Grid(rows, "[[" + "".join(picked.tolist()) + "]]")


def predictions(
    probabilities: torch.Tensor, labels: Sequence[str], top_k: int, logits: torch.Tensor | None = None
) -> list[dict[str, Any]]:
    """The ``top_k`` classes, most probable first, ranked by ``logits`` when given: where probabilities
    tie (all 0.0 but the top class of a saturated model) they keep the order the explained targets have."""
    if logits is None:
        values, indices = probabilities.float().topk(top_k)  # read back as two lists, not element by element
    else:
        indices = logits.float().topk(top_k).indices
        values = probabilities.float()[indices]
    return [
        {"index": i, "label": labels[i], "probability": float(f"{v:.{PROBABILITY_DIGITS}g}")}
        for v, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def _raw_grid(values: torch.Tensor) -> list[list[float]]:
    return [[float(f"{v:.{RAW_SIGNIFICANT}g}") for v in row] for row in values.cpu().double().tolist()]


def _scaled(item: Explanation, values: torch.Tensor) -> torch.Tensor:
    """The map in [0, 1]: divided by its maximum (0 keeps meaning 'no evidence'); activations,
    which may be negative before a ReLU, are scaled from their minimum to their maximum."""
    if item.channel is None:
        return normalise(values)
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else torch.zeros_like(values)


def _describe(item: Explanation, options: RequestOptions, labels: Sequence[str], layer: str) -> dict[str, Any]:
    """What a map is of: method, target (or none), the layer it comes from, its resolution."""
    method = METHODS[item.method]
    entry: dict[str, Any] = {
        "method": item.method,
        "class_specific": method.class_specific,
        "target": None if item.target is None else {"index": item.target, "label": labels[item.target]},
        "layer": (options.params.layer or layer) if method.uses_layer else None,
        "resolution": method.resolution,
    }
    if item.channel is not None:
        entry.update(channel=item.channel, mean=_rounded(item.mean), max=_rounded(item.peak))
    if options.faithfulness is not None:
        entry["faithfulness"] = faithfulness_entry(item)
    return entry


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.{RAW_SIGNIFICANT}g}")


def explanation(
    item: Explanation, options: RequestOptions, labels: Sequence[str], layer: str, picture: Image.Image
) -> dict[str, Any]:
    """One explanation in the requested format; ``picture`` is what the model saw."""
    values = item.values.detach().float().cpu()
    if options.size == "input" or options.format == "overlay":
        values = resize_map(values, (picture.height, picture.width))
    entry = _describe(item, options, labels, layer)
    entry.update(format=options.format, shape=list(values.shape))
    if options.format == "raw":
        entry.update(values=_raw_grid(values), min=float(values.min()), max=float(values.max()))
        return entry
    heatmap = _scaled(item, values)
    if options.format == "grid":
        entry["heatmap"] = grid(heatmap)
    elif options.format == "png":
        entry["png"] = png_base64(grayscale(heatmap))
    else:
        entry["png"] = png_base64(overlay(picture, heatmap))
    return entry


def mosaic(items: list[Explanation], options: RequestOptions, labels: Sequence[str], layer: str) -> dict[str, Any]:
    """All channels of an activations answer as one grayscale PNG, a tile per channel, in order."""
    entry = _describe(items[0], options, labels, layer)
    for key in ("channel", "mean", "max"):
        entry.pop(key, None)
    maps = [_scaled(item, item.values.detach().float().cpu()) for item in items]
    picture, grid = tiles(maps)
    entry.update(
        format="tiles",
        channels=[{"index": i.channel, "mean": _rounded(i.mean), "max": _rounded(i.peak)} for i in items],
        grid=list(grid),
        tile_shape=list(maps[0].shape),
        png=png_base64(picture),
    )
    return entry


def geometry(original_size: tuple[int, int], box: Box) -> dict[str, Any]:
    """Where the maps sit on the uploaded image: its upright (width, height) and the box (x0, y0, x1, y1)
    of it that the model saw, in its pixels, so a client can draw any map over the original."""
    return {"original_size": list(original_size), "box": [round(value, BOX_DECIMALS) for value in box]}


def answer(
    result: SampleResult,
    options: RequestOptions,
    labels: Sequence[str],
    layer: str,
    picture: Image.Image,
    placed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The response object of one image (the documented contract); ``placed``: its ``geometry``."""
    if options.format == "tiles" and result.explanations:
        explanations = [mosaic(result.explanations, options, labels, layer)]
    else:
        explanations = [explanation(item, options, labels, layer, picture) for item in result.explanations]
    body: dict[str, Any] = {
        "predictions": predictions(result.probabilities, labels, options.top_k, result.logits),
        "explanations": explanations,
    }
    if placed is not None:
        body["geometry"] = placed
    if result.decision is not None:  # a cost policy decided: say whether it explained, and why
        body["explained"] = result.decision.explained
        body["explained_because" if result.decision.explained else "skipped_because"] = result.decision.reason
    return body


def encode(body: dict[str, Any]) -> bytes:
    """``body`` as compact JSON bytes, what ``json.dumps`` writes (a negative zero in a heatmap as 0.0).

    A ``Grid`` heatmap is written as its own text: swapped for a placeholder string for
    ``json.dumps``, whose quoted form is then replaced by that text.
    """
    grids: dict[str, str] = {}
    explanations = []
    for entry in body.get("explanations", ()):
        heatmap = entry.get("heatmap")
        text = heatmap.text if isinstance(heatmap, Grid) else None
        if text is None:
            explanations.append(entry)
            continue
        token = f"\x00grid {len(grids)}\x00"  # NUL: in no label or layer name, escaped by json.dumps
        grids[json.dumps(token)] = text
        explanations.append({**entry, "heatmap": token})
    if not grids:
        return json.dumps(body, separators=(",", ":")).encode("utf-8")
    encoded = json.dumps({**body, "explanations": explanations}, separators=(",", ":"))
    for quoted, text in grids.items():
        if encoded.count(quoted) != 1:  # a placeholder met elsewhere: write it the plain way
            return json.dumps(body, separators=(",", ":")).encode("utf-8")
        encoded = encoded.replace(quoted, text)
    return encoded.encode("utf-8")
