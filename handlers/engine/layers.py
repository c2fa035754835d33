"""Target-layer discovery: find the last spatial feature map before global pooling."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Modules whose output is never a good explanation layer: pooling only resamples the
# feature map before it, dropout is the identity in eval mode.
_SKIPPED_TYPES = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)


class TargetLayerError(ValueError):
    """The target layer named in the model config does not exist or is unusable."""


@dataclass(frozen=True)
class LayerRecord:
    """One module call seen during a probe forward, in completion order."""

    name: str
    module: nn.Module
    output_shape: tuple[int, ...] | None  # None when the output is not a single tensor


def trace_module_outputs(model: nn.Module, example: torch.Tensor) -> tuple[list[LayerRecord], torch.Tensor]:
    """Run ``model(example)`` once; record every named module's output shape, and the logits.

    Records are in completion order, so a container comes right after its last child.
    """
    records: list[LayerRecord] = []
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, _inputs, output) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            records.append(LayerRecord(name, module, shape))

        return hook

    for name, module in model.named_modules():
        if name:  # the root module's output is the logits, never a target
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        with torch.inference_mode():
            logits = model(example)
    finally:
        for handle in handles:
            handle.remove()
    return records, logits


def _fits_input(height: int, width: int, input_size: tuple[int, int]) -> bool:
    """Whether an h x w grid has the input's aspect ratio, up to one cell of rounding per side."""
    in_h, in_w = input_size
    return abs(height * in_w - width * in_h) <= in_h + in_w


def is_channels_last(shape: tuple[int, ...], input_size: tuple[int, int]) -> bool:
    """An N x H x W x C map (Swin stages, ConvNeXt blocks): its middle axes have the input's
    aspect ratio and its last two don't, so reading it as N x C x H x W would be wrong."""
    return (
        len(shape) == 4
        and _fits_input(shape[1], shape[2], input_size)
        and not _fits_input(shape[2], shape[3], input_size)
    )


def _is_spatial(record: LayerRecord, input_size: tuple[int, int]) -> bool:
    shape = record.output_shape
    return shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1 and not is_channels_last(shape, input_size)


def spatial_candidates(records: list[LayerRecord], input_size: tuple[int, int]) -> list[str]:
    """Names of modules producing a channels-first N x C x H x W map (H*W > 1), last first, unique."""
    names: list[str] = []
    for record in reversed(records):
        usable = _is_spatial(record, input_size) and not isinstance(record.module, _SKIPPED_TYPES)
        if usable and record.name not in names:
            names.append(record.name)
    return names


def discover_target_layer(records: list[LayerRecord], input_size: tuple[int, int]) -> str:
    """Name of the last module whose output is a spatial feature map before pooling.

    ResNet gives ``layer4``, GoogLeNet ``inception5b``, DenseNet/EfficientNet/MobileNet
    ``features``, SqueezeNet its final ReLU'd conv (``classifier.2``).
    """
    candidates = spatial_candidates(records, input_size)
    if not candidates:
        raise TargetLayerError(
            "no module of this model outputs a spatial feature map (N x C x H x W); "
            "Grad-CAM needs a convolutional layer: name one with target_layer"
        )
    chosen = candidates[0]
    completed = [r.name for r in records]
    after = records[completed.index(chosen) + 1 :]
    if any(r.output_shape is not None and len(r.output_shape) == 3 and r.output_shape[1] > 1 for r in after):
        raise TargetLayerError(
            f"the last spatial feature map ({chosen!r}) is followed by token-sequence "
            "layers (a transformer?); pick the explanation layer yourself with target_layer"
        )
    logger.info("discovered target layer %r (output %s)", chosen, records[completed.index(chosen)].output_shape)
    return chosen


def _problem(module: nn.Module | None, records: list[LayerRecord], input_size: tuple[int, int]) -> str:
    """Why ``module`` can't be explained, in words a user can act on."""
    if module is None:
        return "does not exist"
    shapes = [r.output_shape for r in records if r.module is module and r.output_shape is not None]
    if any(is_channels_last(shape, input_size) for shape in shapes):
        shown = " x ".join(str(v) for v in shapes[-1])
        return (
            f"outputs {shown}, a channels-last (N x H x W x C) map, as transformer stages do; "
            "Grad-CAM here needs a channels-first N x C x H x W map (channels-last and token layers "
            "are not supported yet)"
        )
    return "does not output a spatial N x C x H x W map"


def resolve_target_layer(
    model: nn.Module, name: str, records: list[LayerRecord], input_size: tuple[int, int]
) -> nn.Module:
    """The module called ``name``, or a TargetLayerError saying why not and listing usable names."""
    module = dict(model.named_modules()).get(name)
    if module is not None and any(r.module is module and _is_spatial(r, input_size) for r in records):
        return module
    candidates = spatial_candidates(records, input_size)[:12]
    problem = _problem(module, records, input_size)
    raise TargetLayerError(
        f"target layer {name!r} {problem} in {type(model).__name__}; "
        f"candidates (last first): {', '.join(candidates) or 'none'}"
    )
