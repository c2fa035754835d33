"""The answer's geometry: the original's upright size and the box of it the model saw.

Checked two ways: boxes worked out by hand for a few cases, and on coordinate-ramp images
(red = x, green = y of the upright original) decoded through the server's path (EXIF
orientation, reduced JPEG decoding, long-side cut, resize, centre crop): the picture the
model sees must show the ramp values of the box's pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from handlers.inspection.scenes import STORED_TURN, encode
from handlers.preprocess import InputSpec, Preprocessor
from handlers.serving.decode import decode
from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import load_context, run_batch, unpack_mar
from handlers.testing.mars import SIDE, build_custom_mar

MAX_PIXELS = 40_000_000
SHORTER_SIDE = InputSpec(resize=146, crop=128)
EXACT = InputSpec(resize=(128, 128))


@pytest.mark.parametrize(
    ("spec", "size", "expected"),
    [
        # exact resize: the whole image, whatever its shape
        (EXACT, (400, 300), (0.0, 0.0, 400.0, 300.0)),
        # 400x300 -> 194x146 (int(146 * 400 / 300)), crop 128 at (33, 9); 400/194 and 300/146 pixels each
        (SHORTER_SIDE, (400, 300), (33 * 400 / 194, 9 * 300 / 146, 161 * 400 / 194, 137 * 300 / 146)),
        # portrait 300x640 -> 146x311, crop at (9, round(91.5) = 92)
        (SHORTER_SIDE, (300, 640), (9 * 300 / 146, 92 * 640 / 311, 137 * 300 / 146, 220 * 640 / 311)),
        # 2000x100 is cut to its middle 400x100 first (aspect over 4), then 584x146, crop at (228, 9)
        (SHORTER_SIDE, (2000, 100), (800 + 228 * 400 / 584, 9 * 100 / 146, 800 + 356 * 400 / 584, 137 * 100 / 146)),
        # a crop larger than the resized image pads: resize 100, crop 128 on 100x100 starts 14 px before it
        (InputSpec(resize=100, crop=128), (100, 100), (-14.0, -14.0, 114.0, 114.0)),
    ],
)
def test_box_worked_out_by_hand(spec, size, expected):
    assert Preprocessor(spec).box(size) == pytest.approx(expected, abs=1e-9)


def ramp(width: int, height: int) -> Image.Image:
    """Red grows with x, green with y, across the whole upright image; blue is flat."""
    x = (np.arange(width) + 0.5) / width * 255.0
    y = (np.arange(height) + 0.5) / height * 255.0
    rgb = np.zeros((height, width, 3), dtype=np.float64)
    rgb[..., 0] = x[None, :]
    rgb[..., 1] = y[:, None]
    rgb[..., 2] = 128
    return Image.fromarray(np.round(rgb).astype(np.uint8))


def seen_span(profile: np.ndarray, side: int) -> tuple[float, float]:
    """From the ramp values along one axis of the model's picture, where it starts and ends in the original.

    A least-squares line through the inner samples (the outermost ones are skewed by the
    resampling kernel at the image's edge), extended to both borders of the picture.
    """
    n = len(profile)
    inner = np.arange(2, n - 2)
    slope, intercept = np.polyfit(inner + 0.5, profile[inner], 1)
    return intercept / 255.0 * side, (intercept + slope * n) / 255.0 * side


@pytest.mark.parametrize("orientation", list(STORED_TURN))
@pytest.mark.parametrize(
    ("spec", "size", "fmt"),
    [
        (SHORTER_SIDE, (640, 360), "JPEG"),  # decoded at 1/2 scale (draft), landscape
        (SHORTER_SIDE, (360, 1000), "JPEG"),  # portrait, reduced too
        (SHORTER_SIDE, (1000, 200), "PNG"),  # aspect 5: the long side is cut before resizing
        (EXACT, (500, 300), "PNG"),  # exact resize: the whole image, stretched
        (EXACT, (300, 520), "JPEG"),
    ],
)
def test_box_is_what_the_model_sees(spec, size, fmt, orientation):
    """Decode as the server does; the ramp in the model's picture spans exactly the reported box."""
    preprocessor = Preprocessor(spec)
    decoded = decode(encode(ramp(*size), orientation, fmt), MAX_PIXELS, reduce_to=preprocessor.decode_size())
    assert decoded.original_size == size
    picture = np.asarray(preprocessor.view(decoded.image), dtype=np.float64)
    x0, y0, x1, y1 = preprocessor.box(decoded.original_size)
    width, height = size
    measured_x = seen_span(picture[:, :, 0].mean(axis=0), width)
    measured_y = seen_span(picture[:, :, 1].mean(axis=1), height)
    # 8-bit ramps: one level is side / 255 pixels; the fit over >= 100 samples stays within 0.25 of one
    assert measured_x == pytest.approx((x0, x1), abs=width / 255)
    assert measured_y == pytest.approx((y0, y1), abs=height / 255)


def test_reduced_decoding_keeps_the_original_size():
    """A JPEG decoded at 1/4 scale still reports the upright size of the file's pixels."""
    data = encode(ramp(1600, 1200), 6, "JPEG")
    decoded = decode(data, MAX_PIXELS, reduce_to=(256, 256))
    assert decoded.image.size[0] < 1600 and decoded.original_size == (1600, 1200)


def test_every_answer_carries_its_geometry(tmp_path):
    """The handler answers with the uploaded image's size and box, next to predictions and explanations."""
    model_dir = unpack_mar(build_custom_mar(tmp_path, "--resize", str(SIDE + 8)), tmp_path / "model")
    handler = GradCamHandler()
    handler.initialize(load_context(model_dir, "tiny"))
    rows = [{"body": bytearray(encode(ramp(90, 60), 8, "JPEG"))}, {"body": bytearray(b"not an image")}]
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200, 415] and "geometry" not in bodies[1]
    expected = Preprocessor(InputSpec(resize=SIDE + 8, crop=SIDE)).box((90, 60))
    assert bodies[0]["geometry"] == {"original_size": [90, 60], "box": [round(v, 2) for v in expected]}
