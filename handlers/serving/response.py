"""Build the JSON answer of one image: top-k predictions + its explanations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ..engine import Explanation, SampleResult
from ..render import normalise, overlay, png_base64, resize_map, to_grid
from ..render.images import grayscale
from .options import RequestOptions

PROBABILITY_DIGITS = 4  # significant digits: small probabilities stay visible (3.2e-05)
HEATMAP_DECIMALS = 3
RAW_SIGNIFICANT = 6


def predictions(probabilities: torch.Tensor, labels: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` classes, most probable first."""
    values, indices = probabilities.float().cpu().topk(top_k)
    return [
        {"index": int(i), "label": labels[int(i)], "probability": float(f"{float(v):.{PROBABILITY_DIGITS}g}")}
        for v, i in zip(values, indices, strict=True)
    ]


def _raw_grid(values: torch.Tensor) -> list[list[float]]:
    return [[float(f"{v:.{RAW_SIGNIFICANT}g}") for v in row] for row in values.cpu().double().tolist()]


def explanation(
    item: Explanation, options: RequestOptions, labels: Sequence[str], layer: str, view: Image.Image
) -> dict[str, Any]:
    """One explanation in the requested format; ``view`` is the picture the model saw."""
    values = item.values.detach().float().cpu()
    if options.size == "input" or options.format == "overlay":
        values = resize_map(values, (view.height, view.width))
    entry: dict[str, Any] = {
        "method": item.method,
        "target": {"index": item.target, "label": labels[item.target]},
        "layer": layer,
        "format": options.format,
        "shape": list(values.shape),
    }
    if options.format == "raw":
        entry["values"] = _raw_grid(values)
        entry["min"] = float(values.min())
        entry["max"] = float(values.max())
        return entry
    heatmap = normalise(values)
    if options.format == "grid":
        entry["heatmap"] = to_grid(heatmap, HEATMAP_DECIMALS)
    elif options.format == "png":
        entry["png"] = png_base64(grayscale(heatmap))
    else:
        entry["png"] = png_base64(overlay(view, heatmap))
    return entry


def answer(
    result: SampleResult, options: RequestOptions, labels: Sequence[str], layer: str, view: Image.Image
) -> dict[str, Any]:
    """The response object of one image (the documented contract)."""
    return {
        "predictions": predictions(result.probabilities, labels, options.top_k),
        "explanations": [explanation(item, options, labels, layer, view) for item in result.explanations],
    }
