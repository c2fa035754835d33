"""Small random images, encoded, for requests whose content does not matter."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def image_bytes(seed: int, size: tuple[int, int] = (40, 30), fmt: str = "PNG", **params: Any) -> bytes:
    """A ``size`` (width, height) RGB noise image from ``seed``, encoded as ``fmt`` with Pillow ``params``."""
    array = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()
