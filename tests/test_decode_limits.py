"""Decoding untrusted images with bounded CPU and memory: scan bombs, allow-list, deadline, reduced decoding."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from decode_bombs import encode, gradient, many_segments_jpeg, peak_decode_memory, scan_bomb
from handlers.inspection.synthetic import INPUT_SPEC
from handlers.preprocess import InputSpec, Preprocessor
from handlers.serving import decode
from handlers.serving.config import LIMIT_DEFAULTS
from handlers.serving.decode import DecodeLimits, SharedDeadline, count_jpeg_scans, decode_image
from handlers.serving.errors import RequestError

MAX_PIXELS = 40_000_000
LIMITS = DecodeLimits(max_jpeg_scans=100, timeout_s=10.0)


def refusal(data: bytes, **kwargs) -> RequestError:
    """The RequestError decode_image raises for ``data``."""
    with pytest.raises(RequestError) as caught:
        decode_image(data, MAX_PIXELS, **kwargs)
    return caught.value


def rgb(width: int, height: int) -> Image.Image:
    """A gradient RGB test image."""
    return Image.fromarray(gradient(width, height))


# --- CPU: JPEG scans, segments, allow-list, TIFF codecs, deadline ---------------------------


def test_limits_default_to_the_serving_config():
    expected = DecodeLimits(int(LIMIT_DEFAULTS["max_jpeg_scans"]), float(LIMIT_DEFAULTS["decode_timeout_s"]))
    assert DecodeLimits() == expected


def test_scan_count_follows_the_marker_stream():
    image = rgb(200, 120)
    assert count_jpeg_scans(encode(image, "JPEG")) == 1
    assert count_jpeg_scans(encode(image.convert("L"), "JPEG", progressive=True)) == 6
    progressive = encode(image, "JPEG", progressive=True, restart_marker_blocks=1)
    assert count_jpeg_scans(progressive) == 10  # RSTn inside entropy data are not scans
    # A progressive thumbnail inside APP1 is skipped by its segment length, not counted.
    thumbnail = encode(rgb(32, 32), "JPEG", progressive=True)
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumbnail) + 2) + thumbnail
    with_thumbnail = progressive[:2] + app1 + progressive[2:]
    assert count_jpeg_scans(with_thumbnail) == 10
    assert decode_image(with_thumbnail, MAX_PIXELS).size == (200, 120)


def test_scan_count_stops_at_the_first_image_of_an_mpo():
    frames = [rgb(64, 48), rgb(64, 48)]
    mpo = encode(frames[0], "MPO", save_all=True, append_images=frames[1:], progressive=True)
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    assert count_jpeg_scans(mpo) == 10
    assert decode_image(mpo, MAX_PIXELS).size == (64, 48)


def test_scan_bomb_is_refused_before_decoding():
    bomb = scan_bomb(6000, 6000, 40_000)  # decoding it would take minutes
    started = time.perf_counter()
    error = refusal(bomb)
    assert error.status == 422
    assert "40010 scans" in error.message and "at most 100" in error.message
    assert time.perf_counter() - started < 2.0


def test_scan_limit_is_per_model():
    progressive = encode(rgb(64, 64), "JPEG", progressive=True)
    assert refusal(progressive, limits=DecodeLimits(max_jpeg_scans=9, timeout_s=10)).status == 422
    assert decode_image(progressive, MAX_PIXELS, limits=DecodeLimits(max_jpeg_scans=10, timeout_s=10)).size == (64, 64)


def test_many_marker_segments_are_refused():
    assert decode_image(many_segments_jpeg(100), MAX_PIXELS).size == (32, 32)
    error = refusal(many_segments_jpeg(5000))
    assert error.status == 422 and "marker segments" in error.message


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", id="EPS"),
        pytest.param(encode(rgb(16, 16), "ICO"), id="ICO"),
        pytest.param(encode(rgb(16, 16), "PPM"), id="PPM"),
        pytest.param(encode(rgb(16, 16), "TGA"), id="TGA"),
        pytest.param(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", id="PDF"),
        pytest.param(
            b"8BPS\x00\x01" + b"\x00" * 6 + b"\x00\x03\x00\x00\x00\x10\x00\x00\x00\x10\x00\x08\x00\x03", id="PSD"
        ),
    ],
)
def test_only_allow_listed_formats_are_opened(body):
    error = refusal(body)
    assert error.status == 415 and decode.SUPPORTED in error.message


def test_jpeg_in_tiff_strips_are_counted():
    tiff = encode(rgb(64, 64), "TIFF", compression="jpeg")
    assert decode_image(tiff, MAX_PIXELS).size == (64, 64)
    error = refusal(tiff, limits=DecodeLimits(max_jpeg_scans=0, timeout_s=10))
    assert error.status == 422 and "JPEG strip of the TIFF" in error.message


def test_old_style_jpeg_tiff_is_refused():
    tiff = encode(rgb(64, 64), "TIFF", compression="jpeg")
    entry = struct.pack("<HHIH", 259, 3, 1, 7)  # Compression = 7 (JPEG), little-endian IFD entry
    assert tiff.count(entry) == 1
    error = refusal(tiff.replace(entry, struct.pack("<HHIH", 259, 3, 1, 6)))
    assert error.status == 415 and "tiff_jpeg" in error.message


def test_deadline_stops_a_decode_that_runs_too_long():
    bomb = scan_bomb(2000, 2000, 30_000)  # ~10 s of libjpeg time if let run
    started = time.perf_counter()
    error = refusal(bomb, limits=DecodeLimits(max_jpeg_scans=10**6, timeout_s=0.3))
    assert error.status == 422 and "0.3 s decode limit" in error.message
    assert time.perf_counter() - started < 3.0


def test_a_shared_deadline_stops_an_image_within_its_own_limit_with_503():
    """The images of one KServe request share a decode deadline: past it, 503 (retry), not 422."""
    bomb = scan_bomb(2000, 2000, 30_000)
    started = time.perf_counter()
    limits = DecodeLimits(max_jpeg_scans=10**6, timeout_s=30.0, shared=SharedDeadline(0.3))
    error = refusal(bomb, limits=limits)
    assert error.status == 503 and "took longer than 0.3 s to decode together" in error.message
    assert time.perf_counter() - started < 3.0
    error = refusal(encode(rgb(64, 64), "PNG"), limits=limits)  # the request's next image: its time is spent
    assert error.status == 503 and "fewer or smaller images per request" in error.message
    decoded = decode_image(encode(rgb(64, 64), "PNG"), MAX_PIXELS, limits=DecodeLimits(shared=SharedDeadline(80.0)))
    assert decoded.size == (64, 64)


# --- Colour: the same 8-bit RGB as before, in small types ------------------------------------


def reference_rgb(image: Image.Image) -> np.ndarray:
    """The conversion decode_image made before reduced decoding (full-size float64), as the yardstick."""
    image = ImageOps.exif_transpose(image)
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
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def mode_samples() -> dict[str, bytes]:
    """One small image per awkward mode, 700 rows so conversion runs over several bands."""
    width, height = 500, 700
    base = gradient(width, height, 4)
    ramp = np.arange(width * height, dtype=np.float64).reshape(height, width) / (width * height)
    palette = Image.fromarray(base[..., :3]).quantize(64)
    return {
        "16-bit PNG": encode(Image.fromarray((ramp * 65535).astype(np.uint16)), "PNG"),
        "int32 TIFF small values": encode(Image.fromarray((ramp * 250).astype(np.int32)), "TIFF"),
        "int32 TIFF large values": encode(Image.fromarray((ramp * 60000).astype(np.int32)), "TIFF"),
        "float32 TIFF": encode(Image.fromarray((ramp * 3.5 - 0.2).astype(np.float32)), "TIFF"),
        "RGBA PNG": encode(Image.fromarray(base), "PNG"),
        "LA PNG": encode(Image.fromarray(base).convert("LA"), "PNG"),
        "palette+transparency PNG": encode(palette, "PNG", transparency=3),
        "CMYK JPEG": encode(Image.fromarray(base).convert("CMYK"), "JPEG"),
        "1-bit TIFF": encode(Image.fromarray(base[..., 0]).convert("1"), "TIFF", compression="group4"),
        "animated GIF": encode(palette, "GIF", save_all=True, append_images=[palette.rotate(90)], transparency=5),
    }


@pytest.mark.parametrize("name", list(mode_samples()))
def test_colour_conversion_matches_the_full_size_reference(name):
    data = mode_samples()[name]
    decoded = decode_image(data, MAX_PIXELS)
    assert decoded.mode == "RGB"
    expected = reference_rgb(Image.open(io.BytesIO(data)))
    assert np.abs(np.asarray(decoded, dtype=np.int16) - expected).max() <= 0


# --- Reduced decoding --------------------------------------------------------------------------


def test_decode_size_keeps_twice_the_resize():
    assert Preprocessor(InputSpec(resize=(128, 128))).decode_size() == (256, 256)
    assert Preprocessor(InputSpec(resize=(100, 300))).decode_size() == (600, 200)  # [h, w] -> (width, height)
    assert Preprocessor(InputSpec(resize=146, crop=128)).decode_size() == (292, 292)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_reduction_never_goes_below_the_requested_size(fmt):
    data = encode(rgb(2000, 1500), fmt)
    full = decode_image(data, MAX_PIXELS)
    reduced = decode_image(data, MAX_PIXELS, reduce_to=(256, 256))
    assert full.size == (2000, 1500)
    assert 256 <= reduced.size[0] < 1000 and 256 <= reduced.size[1] < 750
    # A JPEG is reduced by libjpeg (1/4 here), the others by a box average (1/5).
    assert reduced.size == ((500, 375) if fmt == "JPEG" else (400, 300))


def marked(width: int, height: int) -> Image.Image:
    """Gradient with a red block in the stored top-left corner, to see where it ends up."""
    image = rgb(width, height)
    ImageDraw.Draw(image).rectangle((0, 0, width // 5, height // 5), fill=(255, 0, 0))
    return image


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied_after_reducing(fmt, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(marked(3000, 1000), fmt, exif=exif)
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    reduce_to = (150, 450) if orientation >= 5 else (450, 150)  # upright: tall when rotated
    reduced = decode_image(data, MAX_PIXELS, reduce_to=reduce_to)
    assert reduced.size[0] >= reduce_to[0] and reduced.size[1] >= reduce_to[1]
    assert reduced.size[0] * 4 <= reference.size[0]  # the sides were swapped before choosing the factor
    expected = np.asarray(reference.resize(reduced.size, Image.Resampling.BOX), dtype=np.int16)
    assert np.abs(np.asarray(reduced, dtype=np.int16) - expected).mean() < 3


def natural_ish(width: int, height: int, seed: int) -> Image.Image:
    """Gradient background with shapes, thin lines and noise: edges at all scales, like a photo."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(gradient(width, height, seed=seed))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(width // 50, width // 6))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.line((x, y, x + r * 3, y + r), fill=colour, width=max(1, width // 400))
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


# Measured: at most 11-13 levels at a few pixels on sharp random lines, under 0.5 level on average.
MAX_LEVELS, MEAN_LEVELS = 16, 1.0


@pytest.mark.parametrize("spec", [INPUT_SPEC, InputSpec(resize=146, crop=128)], ids=["exact 128", "short 146 crop 128"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_reduced_decoding_gives_the_model_the_same_input(spec, fmt):
    """The model input from a reduced decode vs a full one, in 8-bit levels (tensor x std x 255)."""
    preprocessor = Preprocessor(spec)
    levels = torch.tensor(spec.std)[:, None, None] * 255
    worst, mean = 0.0, 0.0
    for seed, (width, height) in enumerate([(1600, 1200), (3000, 2000), (1100, 2500)]):
        data = encode(natural_ish(width, height, seed), fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        full = preprocessor.tensor(preprocessor.view(decode_image(data, MAX_PIXELS)))
        reduced_image = decode_image(data, MAX_PIXELS, reduce_to=preprocessor.decode_size())
        assert reduced_image.size[0] < width
        difference = (full - preprocessor.tensor(preprocessor.view(reduced_image))).abs() * levels
        worst, mean = max(worst, float(difference.max())), max(mean, float(difference.mean()))
    print(f"{fmt} {spec.resize}: max |full - reduced| = {worst:.1f} levels, mean {mean:.2f}")
    assert worst <= MAX_LEVELS and mean <= MEAN_LEVELS


# --- Memory: measured in a fresh interpreter per decode ----------------------------------------

DECODE_MODULE = Path(decode.__file__)
SMALL = (2000, 2000)  # 4.0 MP: at most 64 MB
LARGE = (6000, 6000)  # 36 MP: at most 4x its 8-bit RGB size


def memory_images(size: tuple[int, int], large: bool) -> dict[str, bytes]:
    """Encoded test images of ``size``; the large set keeps to the formats that cost the most."""
    width, height = size
    base = gradient(width, height, 4)
    gray16 = Image.fromarray(base[..., 0].astype(np.uint16) * 257)
    palette = Image.fromarray(base[..., :3]).quantize(64)
    images = {
        "JPEG progressive": encode(Image.fromarray(base[..., :3]), "JPEG", progressive=True),
        "16-bit gray PNG": encode(gray16, "PNG", compress_level=1),
        "RGBA PNG": encode(Image.fromarray(base), "PNG", compress_level=1),
        "palette+transparency PNG": encode(palette, "PNG", transparency=0, compress_level=1),
        "float32 TIFF": encode(
            Image.fromarray(base[..., 0].astype(np.float32) / 7), "TIFF", compression="tiff_deflate"
        ),
    }
    if not large:
        images |= {
            "JPEG baseline": encode(Image.fromarray(base[..., :3]), "JPEG"),
            "RGB TIFF": encode(Image.fromarray(base[..., :3]), "TIFF", compression="tiff_lzw"),
            "WebP": encode(Image.fromarray(base[..., :3]), "WEBP", quality=80),
            "GIF": encode(palette, "GIF"),
            "BMP": encode(Image.fromarray(base[..., :3]), "BMP"),
        }
    return images


def measure_all(tmp_path: Path, size: tuple[int, int], large: bool) -> dict[str, dict[str, float]]:
    """Peak extra MB per image, decoded at full size and reduced for the default model."""
    reduce_to = list(Preprocessor(INPUT_SPEC).decode_size())
    limits = {"max_jpeg_scans": 100, "timeout_s": 60.0}
    results = {}
    for name, data in memory_images(size, large).items():
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(data)
        full = peak_decode_memory(path, DECODE_MODULE, limits=limits)
        reduced = peak_decode_memory(path, DECODE_MODULE, limits=limits, reduce_to=reduce_to)
        assert tuple(full["size"]) == size and full["mode"] == reduced["mode"] == "RGB"
        results[name] = {"full": full["extra_mb"], "reduced": reduced["extra_mb"]}
    print({name: {k: round(v, 1) for k, v in r.items()} for name, r in results.items()})
    return results


# Pillow decodes a WebP through libwebp's RGBA canvas, a bytes copy of it and the image (~16.5
# bytes a pixel, measured); nothing in decode.py can shrink that, so WebP has its own bound.
WEBP_MB_AT_4_MP = 72


def test_peak_memory_of_a_4_megapixel_image_is_under_64_mb(tmp_path):
    for name, peaks in measure_all(tmp_path, SMALL, large=False).items():
        bound = WEBP_MB_AT_4_MP if name == "WebP" else 64
        assert peaks["full"] <= bound and peaks["reduced"] <= bound, (name, peaks)


def test_peak_memory_of_a_36_megapixel_image_is_under_4x_its_rgb_size(tmp_path):
    bound = 4 * LARGE[0] * LARGE[1] * 3 / 2**20
    for name, peaks in measure_all(tmp_path, LARGE, large=True).items():
        assert peaks["full"] <= bound and peaks["reduced"] <= bound, (name, peaks, bound)


def test_a_jpeg_header_is_read_unchecked_and_its_pixels_checked(monkeypatch):
    """The header's many small reads skip the deadline check (its segments are bounded), the pixels' reads do not."""
    checked: list[int] = []
    real_check = decode._DeadlineReader.check

    def check(self: decode._DeadlineReader) -> None:
        checked.append(self.tell())
        real_check(self)

    monkeypatch.setattr(decode._DeadlineReader, "check", check)
    jpeg, png = encode(rgb(200, 150), "JPEG"), encode(rgb(200, 150), "PNG")
    blocks = len(jpeg) // decode._READ_BLOCK + 1  # libjpeg reads the file from its start, a block at a time
    assert decode_image(jpeg, MAX_PIXELS, limits=LIMITS).size == (200, 150)
    assert 1 <= len(checked) <= blocks + 1
    checked.clear()
    assert decode_image(png, MAX_PIXELS, limits=LIMITS).size == (200, 150)
    assert len(checked) > len(png) // decode._READ_BLOCK + 2  # other formats: every read checked, headers too
