"""Decode untrusted image bytes into an RGB PIL image, with bounded CPU and memory per image.

CPU: only allow-listed formats are opened; a JPEG (MPO, JPEG-in-TIFF) is refused before decoding
when it has more scans than ``max_jpeg_scans`` (libjpeg walks the whole coefficient buffer once per
scan); TIFF compressions other than linear-time codecs are refused; everything left costs time
linear in the pixel count, which the pixel cap bounds. A monotonic deadline is the last line of
defence (see ``_DeadlineReader``).
Memory: a JPEG is decoded at a reduced DCT scale (``draft``) when the caller says how small the
image may be; other formats are decoded once at full size in their own mode, converted to 8-bit
RGB band by band (no float64 or alpha-compositing copies of the whole image), then box-reduced.
"""

from __future__ import annotations

import io
import logging
import math
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import RequestError

logger = logging.getLogger(__name__)

SUPPORTED = "JPEG, PNG, GIF, BMP, TIFF, WebP"
# What Image.open may try: nothing else is even parsed (EPS would run Ghostscript on load).
# MPO has no opener of its own: the JPEG opener returns an MPO image when the file is one.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")

# Bytes per read while decoding (Pillow's default is 64 KiB): each read is a deadline check.
_READ_BLOCK = 16 * 1024
# Pixels per band when converting to RGB: temporaries stay ~2 MB whatever the image size.
_BAND_PIXELS = 1 << 18
# Marker segments (other than SOS and RSTn) a JPEG may have. Real files have tens (APPn, DQT, DHT per
# scan, SOS); Pillow parses every segment before the first scan in Python and keeps APPn/COM
# payloads, so a file of a million tiny COM segments would cost seconds and hundreds of MB.
_MAX_JPEG_SEGMENTS = 4096
# The next marker: 0xFF followed by anything but a stuffed 0x00, a fill 0xFF or RSTn (which
# libjpeg passes over inside entropy-coded data), exactly as libjpeg's next_marker() resyncs.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE_MARKERS = frozenset({0x01, 0xD8})  # TEM, SOI: no length field
_SOS, _EOI = 0xDA, 0xD9
# TIFF codecs whose decoding time is linear in the pixels; JPEG is checked strip by strip,
# old-style JPEG ("tiff_jpeg", compression 6) is refused: obsolete, and libtiff guesses its layout.
_LINEAR_TIFF_COMPRESSIONS = frozenset(
    {
        "raw", "tiff_ccitt", "group3", "group4", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits",
        "tiff_raw_16", "tiff_thunderscan", "tiff_sgilog", "tiff_sgilog24", "lzma", "zstd", "webp",
    }
)  # fmt: skip
_TIFF_STRIPS = ((273, 279), (324, 325))  # (offsets, byte counts) of strips, then of tiles
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
# EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose).
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _limit_default(key: str) -> int | float:
    """A default from the serving config's LIMIT_DEFAULTS, imported late: the config module
    imports the preprocessor (torch), and this module stays a cheap PIL/numpy leaf."""
    from .config import LIMIT_DEFAULTS

    return LIMIT_DEFAULTS[key]


@dataclass(frozen=True)
class DecodeLimits:
    """CPU bounds for one image: JPEG scans allowed, seconds before decoding is abandoned, and the deadline
    it shares with the other images of its request, if any (``SharedDeadline``)."""

    max_jpeg_scans: int = field(default_factory=lambda: int(_limit_default("max_jpeg_scans")))
    timeout_s: float = field(default_factory=lambda: float(_limit_default("decode_timeout_s")))
    shared: SharedDeadline | None = None


class SharedDeadline:
    """One decode deadline for the images of one request (KServe's carry up to 64): ``seconds`` from when
    the first of them starts decoding, so many images take no longer together than a batch of plain requests."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end: float | None = None

    def begin(self) -> float:
        """The deadline (time.monotonic()), started by the first image that asks."""
        if self.end is None:
            self.end = time.monotonic() + self.seconds
        return self.end


class _DeadlineReader(io.BytesIO):
    """The upload as a file whose every read first checks a monotonic deadline.

    Pillow reads through the file between decoder calls (``decodermaxblock`` bytes at a time for
    JPEG, PNG, GIF, BMP and uncompressed TIFF), so a slow decode stops at the next block. It cannot
    stop one long C call: libtiff decodes a compressed TIFF and libwebp a WebP frame in a single
    call, and the last pass of a progressive JPEG runs without reading. Those are linear in the
    pixel count because of the checks made before decoding (pixel cap, TIFF codec allow-list,
    JPEG scan count), so they finish in about a second at the 40 MP cap.
    """

    def __init__(self, data: bytes, limits: DecodeLimits) -> None:
        super().__init__(data)
        self.limits = limits
        self.deadline = time.monotonic() + limits.timeout_s
        self.shared_end = limits.shared.begin() if limits.shared is not None else math.inf

    def check(self) -> None:
        """Raise a 422 once the image's deadline has passed, a 503 once its request's shared one has."""
        now = time.monotonic()
        if now > self.shared_end:
            assert self.limits.shared is not None
            raise RequestError(
                503,
                f"the images of this request took longer than {self.limits.shared.seconds:g} s to decode together "
                "(the model's batchSize x its decode limit) and this one was abandoned: send fewer or smaller "
                "images per request",
                "decode_limit",
            )
        if now > self.deadline:
            raise RequestError(
                422,
                f"image took longer than the {self.limits.timeout_s:g} s decode limit and was abandoned",
                "decode_limit",
            )

    def read(self, size: int | None = -1) -> bytes:
        """BytesIO.read, after the deadline check."""
        self.check()
        return super().read(size)

    @contextmanager
    def unchecked(self) -> Iterator[None]:
        """Plain BytesIO reads inside the block: for a JPEG header, which Pillow parses a few bytes
        per read (about 40 reads for a photo, 30 us of checks) and whose segments
        ``count_jpeg_scans`` has already bounded; decoding the pixels is checked again."""
        vars(self)["read"] = super().read  # the instance's attribute hides the checking method
        try:
            yield
        finally:
            del vars(self)["read"]


def count_jpeg_scans(data: bytes) -> int:
    """Scans (SOS segments) of the JPEG stream in ``data`` up to its first EOI, as libjpeg reads them.

    Entropy-coded data is skipped the way libjpeg does (0xFF00 stuffing, fill bytes and RSTn are
    not markers); APPn/COM payloads are jumped over by their length, so an embedded thumbnail does
    not count. Raises RequestError 422 past ``_MAX_JPEG_SEGMENTS`` other segments.
    """
    scans = segments = 0
    pos = 2  # after SOI
    while (found := _NEXT_MARKER.search(data, pos)) is not None:
        marker, pos = found.group()[1], found.end()
        if marker == _EOI:
            break
        if marker in _STANDALONE_MARKERS:
            continue
        if marker == _SOS:
            scans += 1
        elif (segments := segments + 1) > _MAX_JPEG_SEGMENTS:
            raise RequestError(
                422, f"JPEG has more than {_MAX_JPEG_SEGMENTS} marker segments; refusing to decode it", "decode_limit"
            )
        if pos + 2 > len(data):
            break  # truncated: libjpeg stops here too
        pos += int.from_bytes(data[pos : pos + 2], "big")
    return scans


def _check_scans(scans: int, limits: DecodeLimits, what: str) -> None:
    """Refuse an image whose JPEG data has more scans than the limit (each one a full-buffer pass)."""
    if scans > limits.max_jpeg_scans:
        raise RequestError(
            422,
            f"{what} has {scans} scans; this model accepts at most {limits.max_jpeg_scans} "
            "(each scan costs a pass over the whole image)",
            "decode_limit",
        )


def _check_tiff(image: ImageFile.ImageFile, data: bytes, reader: _DeadlineReader) -> None:
    """Refuse TIFF codecs that are not linear-time; count the scans of every JPEG strip or tile."""
    compression = image.info.get("compression", "raw")
    if compression == "jpeg":
        tags = image.tag_v2  # type: ignore[attr-defined]
        for offsets_tag, counts_tag in _TIFF_STRIPS:
            for offset, count in zip(tags.get(offsets_tag, ()), tags.get(counts_tag, ()), strict=False):
                reader.check()
                _check_scans(count_jpeg_scans(data[offset : offset + count]), reader.limits, "a JPEG strip of the TIFF")
    elif compression not in _LINEAR_TIFF_COMPRESSIONS:
        raise RequestError(415, f"TIFF compression '{compression}' is not supported")


def _open(reader: _DeadlineReader, max_pixels: int) -> ImageFile.ImageFile:
    """Open (headers only) as one of ACCEPTED_FORMATS, mapping failures to request errors."""
    try:
        with warnings.catch_warnings():
            # decode_image checks the pixel count itself, with the model's own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(reader, formats=ACCEPTED_FORMATS)
    except RequestError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own cap (twice MAX_IMAGE_PIXELS): far over ours
        size = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{int(size.group(1))} pixels" if size else "more pixels"
        raise RequestError(413, f"image is {pixels}; this model accepts at most {max_pixels}") from None
    except UnidentifiedImageError:
        raise RequestError(415, f"body is not an image in a supported format ({SUPPORTED})") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is the upload's fault
        raise RequestError(422, f"image is corrupt or truncated: its header could not be read ({error})") from None
    assert isinstance(image, ImageFile.ImageFile)
    image.decodermaxblock = _READ_BLOCK
    return image


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    """Refuse images over the pixel cap (from the header) or without pixels."""
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(
            413, f"image is {width}x{height} = {width * height} pixels; this model accepts at most {max_pixels}"
        )
    if width < 1 or height < 1:
        raise RequestError(422, f"image has no pixels ({width}x{height})")


def _orientation(image: Image.Image) -> int:
    """EXIF orientation (1-8), 1 when absent or unreadable."""
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # logged: a broken EXIF block must not refuse a good image
        logger.warning("ignoring unreadable EXIF orientation", exc_info=True)
        return 1
    return value if isinstance(value, int) and value in _ORIENT else 1


def _stored_target(reduce_to: tuple[int, int], orientation: int) -> tuple[int, int]:
    """``reduce_to`` (upright width, height) in the file's stored orientation: 5-8 swap the sides."""
    width, height = reduce_to
    return (height, width) if orientation >= 5 else (width, height)


def _reduction(size: tuple[int, int], target: tuple[int, int]) -> int:
    """Largest whole factor that keeps both sides of ``size`` at least ``target``."""
    return max(1, min(size[0] // max(target[0], 1), size[1] // max(target[1], 1)))


def _load(image: ImageFile.ImageFile, target: tuple[int, int] | None) -> None:
    """Decode the first frame; a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) still >= ``target``."""
    try:
        image.seek(0)  # animated formats: explain the first frame
        if target is not None and image.format in ("JPEG", "MPO"):
            image.draft(None, target)
        image.load()
    except RequestError:
        raise
    except Exception as error:  # noqa: BLE001 - truncated or corrupt data of any format
        raise RequestError(422, f"image data is corrupt or truncated ({image.format}): {error}") from None


def _eight_bit_divisor(image: Image.Image) -> float:
    """What 16-bit, 32-bit and float pixel values are divided by to map them onto 0..1."""
    if image.mode.startswith("I;16"):
        return 65535.0
    extrema = image.getextrema()  # (low, high) for these one-band modes
    assert not isinstance(extrema[1], tuple), f"{image.mode} is not a one-band mode"
    high = float(extrema[1])
    if image.mode == "F":
        return max(float(high), 1e-12)
    return 65535.0 if high > 255 else 255.0


def _band_to_rgb(band: Image.Image, divisor: float | None) -> Image.Image:
    """RGB of one band of rows: high-depth values scaled by ``divisor``, alpha over white."""
    if divisor is not None:
        scaled = np.clip(np.asarray(band, dtype=np.float64) / divisor * 255.0 + 0.5, 0, 255)
        band = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if band.mode == "P" and "transparency" in band.info:
        band = band.convert("RGBA")
    if band.mode in _ALPHA_MODES:
        rgba = band.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return band.convert("RGB")


def _to_rgb(image: Image.Image, reader: _DeadlineReader) -> Image.Image:
    """8-bit RGB of any mode, converted one band of rows at a time so temporaries stay small.

    The only full-size buffers are the decoded image and the RGB result (no float64 copies).
    """
    if image.mode == "RGB":
        return image
    width, height = image.size
    divisor = _eight_bit_divisor(image) if image.mode in _HIGH_DEPTH_MODES else None
    rows = max(1, _BAND_PIXELS // width)
    result = Image.new("RGB", image.size)
    for top in range(0, height, rows):
        reader.check()
        result.paste(_band_to_rgb(image.crop((0, top, width, min(height, top + rows))), divisor), (0, top))
    return result


def _shrink(image: Image.Image, target: tuple[int, int] | None) -> Image.Image:
    """``image`` box-averaged down by the largest whole factor that keeps both sides >= ``target``.

    A box resize to round(size / factor) keeps the geometry exact; Image.reduce would average a
    partial last block into a whole pixel and stretch the image by up to factor - 1 pixels.
    """
    factor = 1 if target is None else _reduction(image.size, target)
    if factor == 1:
        return image
    width, height = image.size
    return image.resize((round(width / factor), round(height / factor)), Image.Resampling.BOX)


@dataclass(frozen=True)
class Decoded:
    """A decoded upload: its RGB image (possibly reduced) and the original's upright (width, height).

    The original size is what explanations are mapped back onto (the answer's ``geometry``).
    """

    image: Image.Image
    original_size: tuple[int, int]


def decode(
    data: bytes, max_pixels: int, *, reduce_to: tuple[int, int] | None = None, limits: DecodeLimits | None = None
) -> Decoded:
    """RGB image of the first frame, EXIF orientation applied, CPU and memory bounded, with the original's size.

    ``reduce_to``: (width, height) the upright image may be shrunk to (never below it), e.g.
    ``Preprocessor.decode_size()``; None keeps the full size. ``limits``: JPEG scans and decode
    deadline, defaults from the serving config. Raises RequestError: 400 empty, 413 more than
    ``max_pixels`` (from the header, before any pixel is decoded), 415 not an accepted format or
    TIFF codec, 422 corrupt, truncated, too many JPEG scans or past the decode deadline.
    """
    if not data:
        raise RequestError(400, f"empty image: send an image ({SUPPORTED}) as the body or the 'data' field")
    reader = _DeadlineReader(data, limits or DecodeLimits())
    jpeg = data.startswith(b"\xff\xd8\xff")
    if jpeg:  # JPEG or MPO: counted before Pillow parses a byte of it
        _check_scans(count_jpeg_scans(data), reader.limits, "JPEG")
    with reader.unchecked() if jpeg else nullcontext():
        image = _open(reader, max_pixels)
    _check_pixels(image, max_pixels)
    stored_size = image.size  # before draft() may shrink it
    if image.format == "TIFF":
        _check_tiff(image, data, reader)
    # JPEG orientation is in the header; reading it before load() lets draft() pick the right sides.
    orientation = _orientation(image) if image.format in ("JPEG", "MPO") else 1
    target = None if reduce_to is None else _stored_target(reduce_to, orientation)
    _load(image, target)
    if image.format not in ("JPEG", "MPO"):
        orientation = _orientation(image)  # PNG keeps EXIF after the pixel data: read after load()
        target = None if reduce_to is None else _stored_target(reduce_to, orientation)
    rgb = _shrink(_to_rgb(image, reader), target)
    upright = rgb.transpose(_ORIENT[orientation]) if orientation in _ORIENT else rgb
    width, height = stored_size
    return Decoded(upright, (height, width) if orientation >= 5 else (width, height))  # 5-8 swap the sides


def decode_image(
    data: bytes, max_pixels: int, *, reduce_to: tuple[int, int] | None = None, limits: DecodeLimits | None = None
) -> Image.Image:
    """The image of ``decode`` alone (same arguments and errors), for callers that need no geometry."""
    return decode(data, max_pixels, reduce_to=reduce_to, limits=limits).image
