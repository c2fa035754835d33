"""A corpus of bad and awkward uploads, generated here, with the answer each deserves.

Every case is (name, body bytes, request headers, expected HTTP status). Awkward but
valid images (odd modes, formats, sizes) must be answered 200; broken ones get the 4xx
that fits: 400 malformed request, 413 too large, 415 not an image, 422 corrupt image.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    error_hint: str = ""  # a word the error message must contain


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def texture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header announcing ``width`` x ``height`` pixels with a tiny compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    row = b"\x00" + b"\x00" * width
    compressor = zlib.compressobj(9)
    data = compressor.compress(row * 64) + compressor.flush()  # far fewer rows than announced
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def gif_header(width: int, height: int) -> bytes:
    """A GIF whose screen and one frame announce ``width`` x ``height``, with one byte of image data."""
    size = struct.pack("<HH", width, height)
    return b"GIF89a" + size + b"\x00\x00\x00" + b",\x00\x00\x00\x00" + size + b"\x00\x02\x02\x44\x01\x00;"


def json_case(name: str, payload: object, status: int, error_hint: str = "") -> Case:
    """A case whose body is ``payload`` sent as application/json."""
    return Case(name, json.dumps(payload).encode(), status, {"Content-Type": "application/json"}, error_hint)


def corpus(max_image_pixels: int) -> list[Case]:
    """All cases, for a model whose pixel cap is ``max_image_pixels``."""
    good = texture(160, 120)
    jpeg = encode(good, "JPEG", quality=90)
    png = encode(good, "PNG")
    corrupt_jpeg = bytearray(jpeg)
    corrupt_jpeg[len(jpeg) // 3 : len(jpeg) // 3 + 400] = bytes(range(200)) * 2  # valid header, broken scan
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    animated = [texture(64, 48, seed) for seed in range(3)]
    gif = encode(animated[0], "GIF", save_all=True, append_images=animated[1:], duration=100, loop=0)
    b64 = base64.b64encode(png).decode()
    cases = [
        Case("empty body", b"", 400, error_hint="empty"),
        Case("plain text", b"hello, this is not an image", 415, {"Content-Type": "application/octet-stream"}, "format"),
        Case("plain text as text/plain", b"hello, this is not an image", 400, {"Content-Type": "text/plain"}, "base64"),
        Case("random bytes", np.random.default_rng(1).bytes(5000), 415, error_hint="format"),
        Case("truncated JPEG", jpeg[: len(jpeg) // 2], 422, error_hint="truncated"),
        Case("truncated PNG", png[: len(png) // 2], 422, error_hint="truncated"),
        Case("JPEG with corrupt data", bytes(corrupt_jpeg), 200),  # libjpeg conceals scan errors: still an image
        Case("decompression bomb PNG", png_bomb(30_000, 30_000), 413, error_hint="pixels"),
        Case("pixel count over the cap", png_bomb(max_image_pixels // 1000 + 1, 1000), 413, error_hint="pixels"),
        Case("1x1 image", encode(texture(1, 1), "PNG"), 200),
        Case("very wide image", encode(texture(4000, 10), "PNG"), 200),
        Case("very tall image", encode(texture(10, 4000), "PNG"), 200),
        Case("grayscale", encode(good.convert("L"), "PNG"), 200),
        Case(
            "16-bit grayscale",
            encode(Image.fromarray((np.arange(120 * 160, dtype=np.uint16) * 3).reshape(120, 160)), "PNG"),
            200,
        ),
        Case("palette", encode(good.convert("P"), "PNG"), 200),
        Case("RGBA", encode(good.convert("RGBA"), "PNG"), 200),
        Case("LA", encode(good.convert("LA"), "PNG"), 200),
        Case("CMYK JPEG", encode(good.convert("CMYK"), "JPEG"), 200),
        Case("EXIF-rotated JPEG", encode(good, "JPEG", exif=exif), 200),
        Case("animated GIF", gif, 200),
        Case("TIFF", encode(good, "TIFF"), 200),
        Case("WebP", encode(good, "WEBP"), 200),
        Case("BMP", encode(good, "BMP"), 200),
        json_case("base64 that is not base64", {"data": "@@@ not base64 @@@"}, 400, "base64"),
        json_case("JSON without data", {"image": b64}, 400, "'data'"),
        json_case("JSON data of wrong type", {"data": 12345}, 400, "base64 string"),
        json_case("JSON that is a list", [b64], 400, "object"),
        json_case("JSON option of wrong type", {"data": b64, "top_k": "many"}, 400, "top_k"),
        json_case("unknown option", {"data": b64, "colour": "red"}, 400, "unknown option"),
        Case("out-of-range target", png, 400, {"X-Explain-Target": "99"}, "outside"),
        Case("unknown target label", png, 400, {"X-Explain-Target": "rust"}, "not a class label"),
        Case("unknown method", png, 400, {"X-Explain-Method": "lime"}, "method"),
        json_case("valid base64 JSON", {"data": b64, "method": "guided_gradcam"}, 200),
        json_case("target of 5000 digits", {"data": b64, "target": "9" * 5000}, 400, "not a class label"),
        json_case("target that is a superscript digit", {"data": b64, "target": "²"}, 400, "not a class label"),
        json_case("top_k of 5000 digits", {"data": b64, "top_k": "1" * 5000}, 400, "top_k"),
        json_case("top_k over the cap", {"data": b64, "top_k": 50_000}, 400, "top_k"),
        json_case("ten thousand targets", {"data": b64, "target": list(range(10_000))}, 400, "at most"),
        Case(
            "JSON nested 100,000 levels",
            b"[" * 100_000 + b"]" * 100_000,
            400,
            {"Content-Type": "application/json"},
            "nested too deeply",
        ),
        Case("base64 text as the raw body (curl -T file.b64)", b64.encode() + b"\n", 200),
        Case("JSON with a UTF-8 byte order mark", b"\xef\xbb\xbf" + json.dumps({"data": b64}).encode(), 200),
        Case("data URL of raw bytes", b"data:image/png," + png[:64], 400, error_hint="neither an image file nor"),
        Case("GIF header of 65535x65535", gif_header(65535, 65535), 413, error_hint="this model accepts at most"),
    ]
    return cases
