"""The batched input tensor is torchvision's ``normalize(to_tensor(view))``, within float rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from handlers.inspection import MEAN, STD
from handlers.preprocess import InputSpec, Preprocessor

SPECS = [
    InputSpec(resize=(128, 128), mean=MEAN, std=STD),
    InputSpec(resize=40, crop=32),
    InputSpec(resize=(24, 36), interpolation="bicubic"),
]


def _pictures(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (50 + 7 * i, 70, 3), dtype=np.uint8)) for i in range(count)]


def _torchvision(preprocessor: Preprocessor, view: Image.Image) -> torch.Tensor:
    spec = preprocessor.spec
    return TF.normalize(TF.to_tensor(view), list(spec.mean), list(spec.std))


@pytest.mark.parametrize("spec", SPECS)
def test_batch_is_torchvisions_normalised_tensor_of_each_view(spec: InputSpec) -> None:
    preprocessor = Preprocessor(spec)
    views = [preprocessor.view(picture) for picture in _pictures(5)]
    batch = preprocessor.batch(views)
    expected = torch.stack([_torchvision(preprocessor, view) for view in views])
    assert batch.shape == (5, 3, *spec.size) and batch.dtype == torch.float32 and batch.is_contiguous()
    assert torch.allclose(batch, expected, rtol=0, atol=1e-5)
    assert not torch.equal(batch[0], batch[1])  # each row is its own view


def test_tensor_of_one_view_is_its_row_of_any_batch() -> None:
    preprocessor = Preprocessor(SPECS[0])
    views = [preprocessor.view(picture) for picture in _pictures(3, seed=1)]
    batch = preprocessor.batch(views)
    for row, view in enumerate(views):
        assert torch.equal(preprocessor.tensor(view), batch[row])


def test_extreme_pixels_map_to_the_normalised_range_ends() -> None:
    preprocessor = Preprocessor(SPECS[0])
    black, white = Image.new("RGB", (128, 128)), Image.new("RGB", (128, 128), (255, 255, 255))
    low, high = preprocessor.batch([black, white])
    for channel, (mean, std) in enumerate(zip(MEAN, STD, strict=True)):
        assert low[channel].unique().tolist() == pytest.approx([-mean / std], abs=1e-5)
        assert high[channel].unique().tolist() == pytest.approx([(1 - mean) / std], abs=1e-5)


def test_a_grey_view_is_read_as_rgb() -> None:
    preprocessor = Preprocessor(SPECS[0])
    grey = Image.new("L", (128, 128), 100)
    assert torch.equal(preprocessor.tensor(grey), preprocessor.tensor(grey.convert("RGB")))


def _torchvision_view(spec: InputSpec, image: Image.Image) -> Image.Image:
    """What ``view`` did with torchvision's resize before it called PIL itself."""
    mode = TF.InterpolationMode(spec.interpolation)
    if isinstance(spec.resize, int):
        width, height = image.size
        short = min(width, height)
        if max(width, height) > 4 * short:
            image = TF.center_crop(image, [min(height, 4 * short), min(width, 4 * short)])
        image = TF.resize(image, spec.resize, interpolation=mode, antialias=True)
    else:
        image = TF.resize(image, list(spec.resize), interpolation=mode, antialias=True)
    return TF.center_crop(image, [spec.crop, spec.crop]) if spec.crop is not None else image


@pytest.mark.parametrize("spec", [*SPECS, InputSpec(resize=33, crop=30, interpolation="nearest")])
@pytest.mark.parametrize("size", [(70, 50), (50, 70), (128, 128), (40, 40), (33, 90), (300, 20), (23, 33)])
def test_view_is_torchvisions_resize_and_crop(spec: InputSpec, size: tuple[int, int]) -> None:
    picture = Image.fromarray(np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    view = Preprocessor(spec).view(picture)
    expected = _torchvision_view(spec, picture)
    assert view.size == expected.size and np.array_equal(np.asarray(view), np.asarray(expected))


def test_a_grayscale_spec_gives_one_channel_of_luminance() -> None:
    """One mean and std: the model takes 1 channel, the view's ITU-R 601-2 luminance (PIL's L), normalised."""
    spec = InputSpec(resize=(24, 36), mean=(0.5,), std=(0.25,))
    preprocessor = Preprocessor(spec)
    views = [preprocessor.view(picture) for picture in _pictures(3)]
    batch = preprocessor.batch(views)
    expected = torch.stack([TF.normalize(TF.to_tensor(view.convert("L")), [0.5], [0.25]) for view in views])
    assert spec.channels == 1 and batch.shape == (3, 1, 24, 36)
    assert torch.allclose(batch, expected, rtol=0, atol=1e-5)


def test_mean_and_std_need_one_value_per_channel() -> None:
    with pytest.raises(ValueError, match="3 \\(RGB\\) or 1 \\(grayscale\\), got 2 and 2"):
        InputSpec(resize=(24, 24), mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(ValueError, match="got 1 and 3"):
        InputSpec(resize=(24, 24), mean=(0.5,))
