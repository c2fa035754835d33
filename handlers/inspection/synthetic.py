"""Deterministic synthetic metal-surface images with scratch and dent defects.

Each image is brushed metal (streaks along a near-horizontal direction) under a smooth
lighting gradient with sensor noise and a slight colour tint. Defects are drawn into
the luminance before tinting, and every defect's pixel mask is returned with the image
so that explanation maps can be scored against ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..preprocess import InputSpec, Preprocessor
from . import CLASSES, IMAGE_SIZE, INPUT_SIZE, MEAN, STD

KINDS = (*CLASSES, "scratch+dent")  # renderable kinds; the last one is not a training class
MIXED_LABEL = -1  # label of a "scratch+dent" image: it belongs to no single class

_SUPERSAMPLE = 4  # scratches are drawn this many times larger, then box-averaged (anti-aliasing)
_SCRATCH_MASK_COVERAGE = 0.25  # a pixel belongs to a scratch when the line covers this much of it
_KEEP_APART_PX = 10  # minimum gap between the scratch and the dent of a "scratch+dent" image
_MAX_PLACEMENT_TRIES = 200

INPUT_SPEC = InputSpec(resize=(INPUT_SIZE, INPUT_SIZE), interpolation="bilinear", mean=MEAN, std=STD)
_PREPROCESSOR = Preprocessor(INPUT_SPEC)


@dataclass(frozen=True)
class Sample:
    """One rendered image, its class index and the pixel mask of each defect it carries."""

    image: np.ndarray  # H x W x 3 uint8
    kind: str  # one of KINDS
    label: int  # index into CLASSES, or MIXED_LABEL for "scratch+dent"
    masks: dict[str, np.ndarray]  # defect name -> H x W bool; empty for "ok"


def _box_blur_rows(field: np.ndarray, length: int) -> np.ndarray:
    """Average each row over a sliding window of ``length`` pixels (wrapping at the edges)."""
    padded = np.concatenate([field[:, -length:], field], axis=1)
    summed = np.cumsum(padded, axis=1, dtype=np.float64)
    return ((summed[:, length:] - summed[:, :-length]) / length).astype(np.float32)


def _brushed_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit-variance streaks blurred along rows, rotated by a small random angle."""
    margin = size // 4  # keeps the corners covered after a rotation of up to ~25 degrees
    big = size + 2 * margin
    streaks = _box_blur_rows(rng.standard_normal((big, big), dtype=np.float32), int(rng.integers(12, 40)))
    streaks += 0.35 * rng.standard_normal((big, big), dtype=np.float32)  # fine grain across the streaks
    streaks /= streaks.std()
    rotated = Image.fromarray(streaks).rotate(float(rng.uniform(-20.0, 20.0)), Image.Resampling.BILINEAR)
    return np.asarray(rotated)[margin : margin + size, margin : margin + size]


def _surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """Luminance of a defect-free surface: base level + lighting gradient + brushed streaks."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
    angle = rng.uniform(0.0, 2.0 * np.pi)
    gradient = rng.uniform(0.0, 0.3) * (xx * np.cos(angle) + yy * np.sin(angle))
    texture = rng.uniform(0.025, 0.055) * _brushed_texture(rng, size)
    return rng.uniform(0.35, 0.65) + gradient + texture


def _ellipse_radius(size: int, center: np.ndarray, axes: np.ndarray, angle: float) -> np.ndarray:
    """Normalised elliptic radius of every pixel: 1 on the ellipse boundary."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - center[0], yy - center[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2)


@dataclass(frozen=True)
class _Dent:
    """Placement of an elliptic dent: centre (x, y), semi-axes and rotation."""

    center: np.ndarray
    axes: np.ndarray
    angle: float


def _place_dent(rng: np.random.Generator, size: int) -> _Dent:
    """A random dent lying fully inside the image, with a small border."""
    axes = rng.uniform(6.0, 18.0, size=2)
    border = axes.max() + 3.0
    return _Dent(rng.uniform(border, size - border, size=2), axes, float(rng.uniform(0.0, np.pi)))


def _draw_dent(luminance: np.ndarray, dent: _Dent, rng: np.random.Generator) -> np.ndarray:
    """Shade a smooth depression lit from a random side; returns its mask."""
    size = luminance.shape[0]
    radius = _ellipse_radius(size, dent.center, dent.axes, dent.angle)
    inside = radius < 1.0
    depth = np.where(inside, (1.0 - radius**2) ** 2, 0.0).astype(np.float32)
    grad_y, grad_x = np.gradient(-depth)  # the height of a depression is minus its depth
    light = rng.uniform(0.0, 2.0 * np.pi)
    shading = grad_x * np.cos(light) + grad_y * np.sin(light)
    shading /= np.abs(shading).max()
    contrast = rng.uniform(0.12, 0.25)
    luminance += contrast * shading - 0.3 * contrast * depth  # slope shading + a darker floor
    return inside


@dataclass(frozen=True)
class _Scratch:
    """A placed scratch: pixel coverage of its stroke, centre (x, y) and half-extent vector."""

    coverage: np.ndarray
    center: np.ndarray
    half: np.ndarray


def _place_scratch(rng: np.random.Generator, size: int) -> _Scratch:
    """A random thin line segment fully inside the image, with its anti-aliased coverage in [0, 1]."""
    length = rng.uniform(24.0, 90.0)
    angle = rng.uniform(0.0, np.pi)
    half = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
    low = np.abs(half) + 4.0
    center = rng.uniform(low, size - low)
    return scratch_stroke(center, half, rng.uniform(1.0, 3.0), size)


def scratch_stroke(center: np.ndarray, half: np.ndarray, width: float, size: int) -> _Scratch:
    """The anti-aliased coverage of a line from ``center - half`` to ``center + half``, ``width`` px wide."""
    canvas = Image.new("L", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), 0)
    ends = [tuple(((center + sign * half) * _SUPERSAMPLE).tolist()) for sign in (-1.0, 1.0)]
    ImageDraw.Draw(canvas).line(ends, fill=255, width=max(1, round(width * _SUPERSAMPLE)))
    coverage = np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32) / 255.0  # box average
    return _Scratch(coverage, center, half)


def _draw_scratch(luminance: np.ndarray, scratch: _Scratch, rng: np.random.Generator) -> np.ndarray:
    """Add a brighter or darker scratch whose depth varies along it and fades at both ends; returns its mask."""
    size = luminance.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    along = ((xx - scratch.center[0]) * scratch.half[0] + (yy - scratch.center[1]) * scratch.half[1]) / (
        scratch.half @ scratch.half
    )  # -1 at one end, +1 at the other
    ends = np.clip(1.0 - np.abs(along), 0.0, 1.0)
    taper = 0.3 + 0.7 * np.minimum(1.0, 4.0 * ends)
    wobble = 1.0 + 0.25 * np.sin(rng.uniform(1.0, 4.0) * np.pi * along + rng.uniform(0.0, 2.0 * np.pi))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    luminance += sign * rng.uniform(0.13, 0.3) * scratch.coverage * taper * wobble
    return scratch.coverage >= _SCRATCH_MASK_COVERAGE


def _colourise(luminance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Slightly tinted RGB with per-channel sensor noise, as uint8."""
    tint = 1.0 + rng.uniform(-0.04, 0.04, size=3).astype(np.float32)
    noise = rng.uniform(0.005, 0.025) * rng.standard_normal((*luminance.shape, 3), dtype=np.float32)
    rgb = luminance[..., None] * tint + noise
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def render(kind: str, rng: np.random.Generator) -> Sample:
    """Render one image of ``kind`` (one of KINDS), drawing every random choice from ``rng``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    size = IMAGE_SIZE
    luminance = _surface(rng, size)
    masks: dict[str, np.ndarray] = {}
    keep_out = np.zeros((size, size), dtype=bool)
    if "dent" in kind:
        dent = _place_dent(rng, size)
        masks["dent"] = _draw_dent(luminance, dent, rng)
        keep_out = _ellipse_radius(size, dent.center, dent.axes + _KEEP_APART_PX, dent.angle) < 1.0
    if "scratch" in kind:
        for _ in range(_MAX_PLACEMENT_TRIES):
            scratch = _place_scratch(rng, size)
            if not (keep_out & (scratch.coverage > 0)).any():
                break
        else:
            raise RuntimeError("could not place a scratch away from the dent")
        masks["scratch"] = _draw_scratch(luminance, scratch, rng)
    label = CLASSES.index(kind) if kind in CLASSES else MIXED_LABEL
    return Sample(_colourise(luminance, rng), kind, label, masks)


def make_dataset(n: int, seed: int, kinds: Sequence[str] = CLASSES) -> list[Sample]:
    """``n`` samples balanced over ``kinds`` (counts differ by at most one), shuffled; same seed, same list."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.arange(n) % len(kinds))
    return [render(kinds[k], rng) for k in order]


def preprocess(image: np.ndarray | Image.Image) -> torch.Tensor:
    """The model's input transform, the server's own: RGB, resize to INPUT_SIZE, normalise."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return _PREPROCESSOR.tensor(_PREPROCESSOR.view(picture.convert("RGB")))


def to_tensor(images: Sequence[np.ndarray | Image.Image]) -> torch.Tensor:
    """Preprocess a batch of images into an N x 3 x INPUT_SIZE x INPUT_SIZE float tensor."""
    return torch.stack([preprocess(image) for image in images])
