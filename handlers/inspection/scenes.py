"""Inspection pictures as a camera delivers them, with the defects' ground truth in their own pixels.

- ``photo``: a generated surface enlarged into a box of a larger, non-square photo (the rest
  another, defect-free surface), stored turned with an EXIF orientation tag as JPEG or PNG;
  its defect mask in the upright photo's pixels.
- ``footage``: the frames of a production-line video: a plain surface, a scratch moving across
  it, plain again, then a dent appearing and staying; each frame with its class and mask.
  ``write_video`` encodes frames with PyAV (the ``video`` extra).

Both are drawn at the model's 128 px and enlarged, so the model sees what it was trained on
while the picture's own size and shape differ from the model's input.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from . import IMAGE_SIZE
from .synthetic import Sample, _draw_dent, _draw_scratch, _place_dent, _surface, scratch_stroke

# EXIF orientation -> the turn that stores an upright picture so that the tag displays it upright again.
STORED_TURN = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class Photo:
    """An uploaded photo: the file's bytes, its upright size, its class and where its defects are."""

    data: bytes
    size: tuple[int, int]  # upright (width, height)
    kind: str
    mask: np.ndarray  # height x width bool, upright: every defect pixel


def _enlarged(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize(size, resample))


def _mask(sample: Sample) -> np.ndarray:
    """The union of a sample's defect masks (all False for ``ok``)."""
    mask = np.zeros(sample.image.shape[:2], dtype=bool)
    for defect in sample.masks.values():
        mask |= defect
    return mask


def encode(upright: Image.Image, orientation: int = 1, fmt: str = "JPEG") -> bytes:
    """``upright`` stored turned as EXIF ``orientation`` says (so that viewers show it upright), as a file."""
    turn = STORED_TURN[orientation]
    stored = upright if turn is None else upright.transpose(turn)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    stored.save(buffer, format=fmt, exif=exif, **options)
    return buffer.getvalue()


def photo(
    sample: Sample,
    size: tuple[int, int],
    box: tuple[int, int, int, int] | None = None,
    background: Sample | None = None,
    orientation: int = 1,
    fmt: str = "JPEG",
) -> Photo:
    """``sample`` enlarged into ``box`` (x0, y0, x1, y1; default the whole photo) of a ``size`` photo.

    Outside the box the photo shows ``background`` (a defect-free sample) stretched to the whole size.
    """
    width, height = size
    x0, y0, x1, y1 = box or (0, 0, width, height)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    if background is not None:
        canvas[:] = _enlarged(background.image, size, Image.Resampling.BICUBIC)
    canvas[y0:y1, x0:x1] = _enlarged(sample.image, (x1 - x0, y1 - y0), Image.Resampling.BICUBIC)
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = _enlarged(_mask(sample).astype(np.uint8) * 255, (x1 - x0, y1 - y0), Image.Resampling.NEAREST)
    return Photo(encode(Image.fromarray(canvas), orientation, fmt), size, sample.kind, mask)


@dataclass(frozen=True)
class Frame:
    """One frame of the inspection video, with its ground truth."""

    image: np.ndarray  # height x width x 3 uint8
    kind: str  # "ok", "scratch" or "dent"
    mask: np.ndarray  # height x width bool


def _timeline(frames: int) -> list[str]:
    """What each frame shows: 1/6 plain, 5/12 the moving scratch, 1/12 plain, the rest the dent."""
    plain, scratch, gap = frames // 6, 5 * frames // 12, frames // 12
    return ["ok"] * plain + ["scratch"] * scratch + ["ok"] * gap + ["dent"] * (frames - plain - scratch - gap)


def footage(seed: int, size: tuple[int, int] = (256, 192), frames: int = 48) -> list[Frame]:
    """The frames of one video: one surface; a scratch crossing it left to right; later a dent.

    The surface, the scratch's look and the dent are fixed by ``seed``; each frame has its own
    sensor noise. Frames are drawn at the model's size and enlarged to ``size`` (width, height).
    """
    side = IMAGE_SIZE
    scene = np.random.default_rng(seed)
    surface = _surface(scene, side)
    tint = 1.0 + scene.uniform(-0.04, 0.04, size=3).astype(np.float32)
    noise = scene.uniform(0.005, 0.02)
    length, angle = scene.uniform(40.0, 60.0), scene.uniform(np.pi / 3, 2 * np.pi / 3)  # steep: it crosses sideways
    half = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
    width, row = scene.uniform(1.5, 2.5), scene.uniform(0.4, 0.6) * side
    dent = _place_dent(scene, side)
    kinds = _timeline(frames)
    scratch_frames = [i for i, kind in enumerate(kinds) if kind == "scratch"]
    margin = abs(half[0]) + 6.0
    result = []
    for index, kind in enumerate(kinds):
        luminance = surface.copy()
        mask = np.zeros((side, side), dtype=bool)
        if kind == "scratch":
            progress = scratch_frames.index(index) / max(1, len(scratch_frames) - 1)
            center = np.array([margin + progress * (side - 2 * margin), row])
            # the same generator every frame: the scratch keeps its depth, sign and wobble as it moves
            mask = _draw_scratch(luminance, scratch_stroke(center, half, width, side), np.random.default_rng([seed, 1]))
        elif kind == "dent":
            mask = _draw_dent(luminance, dent, np.random.default_rng([seed, 2]))
        grain = np.random.default_rng([seed, 3, index]).standard_normal((side, side, 3), dtype=np.float32)
        rgb = np.round(np.clip(luminance[..., None] * tint + noise * grain, 0.0, 1.0) * 255.0).astype(np.uint8)
        image = _enlarged(rgb, size, Image.Resampling.BICUBIC)
        result.append(Frame(image, kind, _enlarged(mask.astype(np.uint8) * 255, size, Image.Resampling.NEAREST) > 0))
    return result


def write_video(images: Sequence[np.ndarray], path: Path, fps: int = 10, crf: int = 12) -> None:
    """Encode RGB frames as H.264 (yuv420p, ``crf``: lower is closer to the frames) into ``path`` (e.g. .mp4)."""
    import av  # the video extra: imported only where videos are written

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        height, width = images[0].shape[:2]
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for index, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def within_a_cell(mask: np.ndarray, box: Sequence[float], cells: tuple[int, int], point: Sequence[float]) -> bool:
    """Whether ``point`` (x, y in the picture's pixels) falls in a map cell next to or on a defect pixel.

    The map's ``cells`` (rows, columns) tile ``box`` (x0, y0, x1, y1) of the picture; a cell is on
    the defect when the centre of any ``mask`` pixel lies in it: the pointing game with the
    evaluation's tolerance of one cell, counted in the picture's own pixels.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    rows, columns = cells
    ys, xs = np.nonzero(mask)
    defect_columns = np.floor((xs + 0.5 - x0) / (x1 - x0) * columns)
    defect_rows = np.floor((ys + 0.5 - y0) / (y1 - y0) * rows)
    column = np.floor((float(point[0]) - x0) / (x1 - x0) * columns)
    row = np.floor((float(point[1]) - y0) / (y1 - y0) * rows)
    return bool(np.any((np.abs(defect_columns - column) <= 1) & (np.abs(defect_rows - row) <= 1)))
