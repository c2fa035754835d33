"""Turn a decoded RGB image into the model's normalised input tensor."""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from .config import InputSpec

# Past this aspect ratio, resizing the shorter side first would build an enormous image;
# the centre crop only keeps the middle, so cut the long side down before resizing.
_MAX_ASPECT = 4.0


class Preprocessor:
    """Resize (shorter side or exact), optional centre crop, to tensor, normalise."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.interpolation = InterpolationMode(spec.interpolation)

    def view(self, image: Image.Image) -> Image.Image:
        """The RGB picture the model sees (resized and cropped), used for overlays."""
        spec = self.spec
        if isinstance(spec.resize, int):
            width, height = image.size
            short = min(width, height)
            if max(width, height) > _MAX_ASPECT * short:
                image = TF.center_crop(image, [min(height, int(_MAX_ASPECT * short)), min(width, int(_MAX_ASPECT * short))])
            image = TF.resize(image, spec.resize, interpolation=self.interpolation, antialias=True)
        else:
            image = TF.resize(image, list(spec.resize), interpolation=self.interpolation, antialias=True)
        if spec.crop is not None:
            image = TF.center_crop(image, [spec.crop, spec.crop])
        return image

    def tensor(self, view: Image.Image) -> torch.Tensor:
        """Normalised 3 x H x W float tensor of a view."""
        return TF.normalize(TF.to_tensor(view), list(self.spec.mean), list(self.spec.std))
