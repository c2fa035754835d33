"""Turn a decoded RGB image into the model's normalised input tensor.

One implementation for serving, training and evaluation, so the model always sees
exactly what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the model's input tensor.

    ``resize``: an int resizes the shorter side (aspect kept), [h, w] resizes exactly;
    ``crop``: optional centre crop side after resizing; ``mean``/``std``: one value per input
    channel, three for RGB models, one for grayscale ones (which see the image's luminance).
    """

    resize: int | tuple[int, int]
    crop: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if isinstance(self.resize, int) and self.crop is None:
            raise ValueError("input.resize as a single int needs input.crop to fix the input size")
        if self.interpolation not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"input.interpolation {self.interpolation!r} is not nearest, bilinear or bicubic")
        if len(self.mean) not in (1, 3) or len(self.std) != len(self.mean):
            raise ValueError(
                f"input.mean and input.std need one value per channel, 3 (RGB) or 1 (grayscale), "
                f"got {len(self.mean)} and {len(self.std)}"
            )

    @property
    def channels(self) -> int:
        """Input channels of the model: 3 (RGB) or 1 (grayscale: the image's luminance)."""
        return len(self.mean)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the tensor the model receives."""
        if self.crop is not None:
            return (self.crop, self.crop)
        assert isinstance(self.resize, tuple)
        return self.resize


# The decoder may shrink an image until each side is this many times what the resize keeps:
# the antialiased resize then still averages several source pixels per output pixel, so the
# tensor (and the map and overlay drawn on the view) match a full-size decode.
DECODE_MARGIN = 2

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels of an upright image


def _crop_offset(side: int, crop: int) -> int:
    """Where torchvision's centre crop of ``crop`` pixels starts on a ``side``-pixel axis (negative: it pads)."""
    if crop > side:
        return -((crop - side) // 2)
    return round((side - crop) / 2.0)  # Python rounds halves to even, as torchvision does


# PIL's filter for each interpolation, as torchvision maps them for PIL images.
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

# Past this aspect ratio, resizing the shorter side first would build an enormous image;
# the centre crop only keeps the middle, so cut the long side down before resizing.
_MAX_ASPECT = 4.0


class Preprocessor:
    """Resize (shorter side or exact), optional centre crop, to tensor, normalise."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.resample = _RESAMPLE[spec.interpolation]
        # (x / 255 - mean) / std as one multiply-add per value: x * scale + shift, per channel.
        std = torch.tensor(spec.std, dtype=torch.float64)
        self._scale = (1.0 / (255.0 * std)).float().view(-1, 1, 1)
        self._shift = (-torch.tensor(spec.mean, dtype=torch.float64) / std).float().view(-1, 1, 1)
        self._mode = "RGB" if spec.channels == 3 else "L"  # L: PIL's ITU-R 601-2 luminance

    def decode_size(self) -> tuple[int, int]:
        """Smallest (width, height) an image may be decoded at without changing what the model sees.

        Shorter-side resize: both sides >= DECODE_MARGIN x resize (so the shorter one is);
        exact resize [h, w]: width >= DECODE_MARGIN x w and height >= DECODE_MARGIN x h.
        """
        resize = self.spec.resize
        if isinstance(resize, int):
            return (DECODE_MARGIN * resize, DECODE_MARGIN * resize)
        height, width = resize
        return (DECODE_MARGIN * width, DECODE_MARGIN * height)

    def view(self, image: Image.Image) -> Image.Image:
        """The RGB picture the model sees (resized and cropped), used for overlays."""
        spec = self.spec
        if isinstance(spec.resize, int):
            width, height = image.size
            short = min(width, height)
            if max(width, height) > _MAX_ASPECT * short:
                image = TF.center_crop(
                    image, [min(height, int(_MAX_ASPECT * short)), min(width, int(_MAX_ASPECT * short))]
                )
        image = self._resized(image)
        if spec.crop is not None:
            image = TF.center_crop(image, [spec.crop, spec.crop])
        return image

    def _resized(self, image: Image.Image) -> Image.Image:
        """``image`` resized as torchvision's ``resize`` does a PIL image (same size rule, same PIL
        filter, always antialiased), without its per-call checks."""
        width, height = image.size
        if isinstance(self.spec.resize, int):  # the shorter side to resize, the longer in proportion
            long = int(self.spec.resize * max(width, height) / min(width, height))
            size = (self.spec.resize, long) if width <= height else (long, self.spec.resize)
        else:
            size = (self.spec.resize[1], self.spec.resize[0])
        return image if size == (width, height) else image.resize(size, self.resample)

    def box(self, size: tuple[int, int]) -> Box:
        """The part of an upright image of ``size`` (width, height) that ``view`` shows the model, as
        (x0, y0, x1, y1) in that image's pixels: the same long-side cut, resize and centre crop, in numbers.

        It extends past the image where the crop is larger than the resized image (``view`` pads there).
        """
        spec = self.spec
        width, height = size
        left = top = 0
        if isinstance(spec.resize, int):
            short = min(width, height)
            if max(width, height) > _MAX_ASPECT * short:
                cut_width, cut_height = min(width, int(_MAX_ASPECT * short)), min(height, int(_MAX_ASPECT * short))
                left, top = _crop_offset(width, cut_width), _crop_offset(height, cut_height)
                width, height = cut_width, cut_height
            long = int(spec.resize * max(width, height) / min(width, height))  # torchvision's shorter-side rule
            new_width, new_height = (spec.resize, long) if width <= height else (long, spec.resize)
        else:
            new_height, new_width = spec.resize
        scale_x, scale_y = width / new_width, height / new_height  # image pixels per resized pixel
        crop_x = crop_y = 0
        seen_width, seen_height = new_width, new_height
        if spec.crop is not None:
            crop_x, crop_y = _crop_offset(new_width, spec.crop), _crop_offset(new_height, spec.crop)
            seen_width = seen_height = spec.crop
        return (
            left + crop_x * scale_x,
            top + crop_y * scale_y,
            left + (crop_x + seen_width) * scale_x,
            top + (crop_y + seen_height) * scale_y,
        )

    def tensor(self, view: Image.Image) -> torch.Tensor:
        """Normalised C x H x W float tensor of a view (C: the spec's channels)."""
        return self.batch([view])[0]

    def batch(self, views: list[Image.Image]) -> torch.Tensor:
        """Normalised N x C x H x W float tensor of views of one size, the whole batch at once.

        The 8-bit pixels are stacked, converted to float into the channel-first batch in one
        copy, then scaled and shifted in place: the values of ``normalize(to_tensor(view))`` per
        view within float rounding (about 1e-6), without a float tensor per view, nor a stack of them.
        """
        converted = [view if view.mode == self._mode else view.convert(self._mode) for view in views]
        pixels = torch.from_numpy(np.stack([np.asarray(view) for view in converted]))
        if pixels.dim() == 3:  # L: one channel
            pixels = pixels.unsqueeze(3)
        batch = torch.empty((len(views), pixels.shape[3], *pixels.shape[1:3]), dtype=torch.float32)
        batch.copy_(pixels.permute(0, 3, 1, 2))
        return batch.mul_(self._scale).add_(self._shift)
