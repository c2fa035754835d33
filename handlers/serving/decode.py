"""Decode untrusted image bytes into an RGB PIL image, refusing what can't be served."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import RequestError

logger = logging.getLogger(__name__)

SUPPORTED = "JPEG, PNG, GIF, BMP, TIFF, WebP"


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # decode_image checks the pixel count itself, with the model's own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise RequestError(413, f"image is too large to decode safely: {error}") from None
    except UnidentifiedImageError:
        raise RequestError(415, f"body is not an image in a supported format ({SUPPORTED})") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is the upload's fault
        raise RequestError(422, f"image is corrupt or truncated: its header could not be read ({error})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL mode: 16-bit/float scaled to 8 bits, alpha over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            top = max(float(array.max(initial=0)), 1e-12)
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """RGB image of the first frame, EXIF orientation applied.

    Raises RequestError: 400 empty, 413 more than ``max_pixels`` (checked from the
    header, before any pixel is decoded), 415 not an image, 422 corrupt or truncated.
    """
    if not data:
        raise RequestError(400, f"empty image: send an image ({SUPPORTED}) as the body or the 'data' field")
    image = _open(data)
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(
            413, f"image is {width}x{height} = {width * height} pixels; this model accepts at most {max_pixels}"
        )
    if width < 1 or height < 1:
        raise RequestError(422, f"image has no pixels ({width}x{height})")
    try:
        image.seek(0)  # animated formats: explain the first frame
        image.load()
    except Exception as error:  # noqa: BLE001 - truncated or corrupt data of any format
        raise RequestError(422, f"image data is corrupt or truncated ({image.format}): {error}") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:
        logger.warning("ignoring unreadable EXIF orientation", exc_info=True)
    return _to_rgb(image)
