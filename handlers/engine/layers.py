"""Target-layer discovery and map layouts: which layer outputs can be explained, and how to read them."""

from __future__ import annotations

import dataclasses
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


# Tokens before the patch tokens of a transformer: class, distillation and register tokens.
MAX_PREFIX_TOKENS = 16


@dataclass(frozen=True)
class MapLayout:
    """How a layer's output becomes an N x C x H x W map.

    ``nchw``: as it is (CNNs); ``nhwc``: channels last (Swin stages, ConvNeXt blocks), permuted;
    ``tokens``: N x T x C (vision transformers), its first ``prefix`` tokens dropped and the rest
    laid on the model's patch ``grid``.
    """

    kind: str
    prefix: int = 0
    grid: tuple[int, int] = (0, 0)

    def to_nchw(self, output: torch.Tensor) -> torch.Tensor:
        """The map (a view where the layout allows) of a layer output or of its gradient."""
        if self.kind == "nhwc":
            return output.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            height, width = self.grid
            patches = output[:, self.prefix :, :]
            return patches.reshape(output.shape[0], height, width, output.shape[2]).permute(0, 3, 1, 2)
        return output


@dataclass(frozen=True)
class LayerRecord:
    """One module call seen during a probe forward, in completion order."""

    name: str
    module: nn.Module
    output_shape: tuple[int, ...] | None  # None when the output is not a single tensor
    layout: MapLayout | None = None  # how its output is a map, when it is one


def _fits_input(height: int, width: int, input_size: tuple[int, int]) -> bool:
    """Whether an h x w grid has the input's aspect ratio, up to one cell of rounding per side."""
    in_h, in_w = input_size
    return abs(height * in_w - width * in_h) <= in_h + in_w


def _token_grid(tokens: int, grid: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int, int] | None:
    """(prefix, h, w) when ``tokens`` are a patch grid, ``grid`` itself or one pooled from it (LeViT's
    stages), after at most MAX_PREFIX_TOKENS others: fewest others first, then the input's aspect."""
    for prefix in range(min(MAX_PREFIX_TOKENS, tokens - 1) + 1):
        cells = tokens - prefix
        if cells == grid[0] * grid[1]:
            return prefix, *grid
        shapes = [
            (h, cells // h)
            for h in range(1, grid[0] + 1)
            if cells % h == 0 and cells // h <= grid[1] and _fits_input(h, cells // h, input_size)
        ]
        if shapes and cells > 1:
            h, w = min(shapes, key=lambda hw: abs(hw[0] * input_size[1] - hw[1] * input_size[0]))
            return prefix, h, w
    return None


def _layout(
    shape: tuple[int, ...] | None,
    input_size: tuple[int, int],
    grid: tuple[int, int] | None,
    in_tokens: bool,
    earlier_grids: tuple[tuple[int, int], ...] = (),
) -> MapLayout | None:
    """The layout of an output of ``shape``, or None when it is no map of the image.

    A 4-d output is channels-first when its last two axes have the input's aspect ratio, else
    channels-last when its middle axes do; a 3-d one is tokens when it holds the patch grid
    (``grid``, from the patch embedding before it) or a grid pooled from it, or exactly one of
    ``earlier_grids`` (a model with several patch embeddings), plus at most MAX_PREFIX_TOKENS
    others. Once the model works on tokens (``in_tokens``), a 4-d output with more cells than the
    patch grid is an attention matrix (tokens x tokens), not a map.
    """
    if shape is None:
        return None
    if len(shape) == 4:
        for kind, (h, w) in (("nchw", shape[2:4]), ("nhwc", shape[1:3])):
            if h * w > 1 and _fits_input(h, w, input_size):
                too_fine = in_tokens and grid is not None and h * w > grid[0] * grid[1]
                return None if too_fine else MapLayout(kind)
        return None
    if len(shape) == 3 and grid is not None:
        found = _token_grid(shape[1], grid, input_size)
        if found is not None:
            prefix, h, w = found
            return MapLayout("tokens", prefix, (h, w))
        for earlier in reversed(earlier_grids):  # another token stream's exact patch grid (CrossViT's branches)
            prefix = shape[1] - earlier[0] * earlier[1]
            if 0 <= prefix <= MAX_PREFIX_TOKENS:
                return MapLayout("tokens", prefix, earlier)
    return None


def _with_layouts(records: list[LayerRecord], input_size: tuple[int, int], batch: int) -> list[LayerRecord]:
    """Records with their layouts; the patch grid is the last channels-first map before the tokens (the
    grids before it still count for token streams of exactly their size).

    An output whose first axis is not the batch's (windowed attention: windows x tokens x C, as in
    Swin or GC ViT blocks) is no map of the image, whatever its other axes."""
    laid: list[LayerRecord] = []
    grid: tuple[int, int] | None = None
    earlier: tuple[tuple[int, int], ...] = ()  # the grids before it, for token streams of other patch sizes
    in_tokens = False
    for record in records:
        shape = record.output_shape
        layout = _layout(shape, input_size, grid, in_tokens, earlier) if shape and shape[0] == batch else None
        if layout is not None and layout.kind == "nchw" and shape is not None and grid != (shape[2], shape[3]):
            earlier = (*(g for g in earlier if g != grid), grid) if grid is not None else earlier
            grid = (shape[2], shape[3])
        in_tokens = in_tokens or (layout is not None and layout.kind == "tokens")
        laid.append(dataclasses.replace(record, layout=layout))
    return laid


def trace_module_outputs(model: nn.Module, example: torch.Tensor) -> tuple[list[LayerRecord], torch.Tensor]:
    """Run ``model(example)`` once; record every named module's output shape and layout, and the logits.

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
    return _with_layouts(records, (example.shape[2], example.shape[3]), example.shape[0]), logits


def map_candidates(records: list[LayerRecord]) -> list[LayerRecord]:
    """Records of modules whose output is a map (any layout), last first, one per name."""
    seen: set[str] = set()
    candidates = []
    for record in reversed(records):
        if record.layout is not None and not isinstance(record.module, _SKIPPED_TYPES) and record.name not in seen:
            seen.add(record.name)
            candidates.append(record)
    return candidates


def _head_input(model: nn.Module, records: list[LayerRecord] | None) -> nn.Module | None:
    """The classifier's last Linear, whose input holds every feature the prediction can use."""
    linears = [r.module for r in records or [] if isinstance(r.module, nn.Linear)]
    return linears[-1] if linears else None


def patch_gradients(
    model: nn.Module, example: torch.Tensor, candidates: list[LayerRecord], records: list[LayerRecord] | None = None
) -> dict[str, float]:
    """For each candidate, the largest gradient magnitude over its map cells (prefix tokens
    excluded), from one forward and one backward: 0 means the map cannot explain the prediction.

    The gradient is taken of a fixed random projection of what the head reads (the input of the
    last Linear, else the logits), so a head initialised to zeros (torchvision's ViT) still counts.
    """
    found: dict[str, float] = {}
    handles = []
    head_inputs: list[torch.Tensor] = []
    head = _head_input(model, records)
    if head is not None:
        handles.append(head.register_forward_pre_hook(lambda _m, inputs: head_inputs.append(inputs[0])))

    def make_hook(record: LayerRecord):
        layout = record.layout
        assert layout is not None

        def keep(grad: torch.Tensor) -> None:
            found[record.name] = max(found.get(record.name, 0.0), float(layout.to_nchw(grad).abs().amax()))

        def hook(_module: nn.Module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(keep)

        return hook

    modules = {record.name: record.module for record in candidates}
    for record in candidates:
        handles.append(modules[record.name].register_forward_hook(make_hook(record)))
    try:
        with torch.enable_grad():
            logits = model(example.detach().clone().requires_grad_(True))
            read = head_inputs[-1] if head_inputs else logits
            direction = torch.randn(read.shape, generator=torch.Generator().manual_seed(0)).to(read)
            (read * direction).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    return {record.name: found.get(record.name, 0.0) for record in candidates}


def _token_width(records: list[LayerRecord]) -> int | None:
    """The transformer's embedding width: the channels of its last token output (the final norm)."""
    tokens = [r for r in records if r.layout is not None and r.layout.kind == "tokens" and r.output_shape]
    return tokens[-1].output_shape[2] if tokens and tokens[-1].output_shape else None


def _residual_stream(candidates: list[LayerRecord], records: list[LayerRecord]) -> list[LayerRecord]:
    """A transformer's candidate layers in the order they are preferred, each group last first:
    channels-last maps and token maps of the residual stream's width, token Linear projections
    (q/k/v, MLP) after the rest, then channels-first maps (convolutions inside blocks, as in CoaT or MViT).
    A module called more than once (shared) has no single output and is left out."""
    width = _token_width(records)
    calls: dict[int, int] = {}
    for record in records:
        calls[id(record.module)] = calls.get(id(record.module), 0) + 1
    tokens: list[LayerRecord] = []
    projections: list[LayerRecord] = []
    convolutions: list[LayerRecord] = []
    for record in candidates:
        if record.layout is None or calls[id(record.module)] > 1:
            continue
        if record.layout.kind == "nchw":
            convolutions.append(record)
        elif record.layout.kind == "nhwc":
            tokens.append(record)
        elif (record.output_shape or (0, 0, 0))[2] == width:
            (projections if isinstance(record.module, nn.Linear) else tokens).append(record)
    return tokens + projections + convolutions


def discover_target_layer(model: nn.Module, example: torch.Tensor, records: list[LayerRecord]) -> str:
    """Name of the layer to explain by default.

    CNNs (the last map is channels-first): the last spatial feature map before pooling (ResNet
    ``layer4``, GoogLeNet ``inception5b``, DenseNet/EfficientNet/MobileNet ``features``, Swin's
    final ``permute``). Transformers (token or channels-last maps come last): the last map whose
    cells still reach the prediction, measured by one backward. In a ViT the last block's output
    feeds only the class token to the head, so its patch gradients are exactly zero; the last
    layer that reaches is the last block's first norm (the input of its attention). Among token
    layers only those of the residual stream count (``_residual_stream``).
    """
    candidates = map_candidates(records)
    if not candidates:
        raise TargetLayerError(
            "no module of this model outputs a spatial feature map (N x C x H x W, N x H x W x C or "
            "patch tokens); name the layer to explain with target_layer"
        )
    if candidates[0].layout is not None and candidates[0].layout.kind == "nchw":
        chosen = candidates[0]
    else:
        stream = _residual_stream(candidates, records)
        reach = patch_gradients(model, example, stream, records)
        reaching = [r for r in stream if reach[r.name] > 0]
        if not reaching:
            raise TargetLayerError("no map of this model reaches its prediction; name the layer with target_layer")
        chosen = reaching[0]
    logger.info("discovered target layer %r (output %s, %s)", chosen.name, chosen.output_shape, chosen.layout)
    return chosen.name


def _shown(shape: tuple[int, ...] | None) -> str:
    return " x ".join(str(v) for v in shape) if shape else "no single tensor"


def resolve_target_layer(model: nn.Module, name: str, records: list[LayerRecord], example: torch.Tensor) -> LayerRecord:
    """The record of the module called ``name``, or a TargetLayerError saying why not and listing usable names.

    A token or channels-last layer must also reach the prediction (non-zero gradient on its map).
    """
    module = dict(model.named_modules()).get(name)
    candidates = [r.name for r in map_candidates(records)][:12]
    listed = f"candidates (last first): {', '.join(candidates) or 'none'}"
    if module is None:
        raise TargetLayerError(f"target layer {name!r} does not exist in {type(model).__name__}; {listed}")
    mapped = [r for r in records if r.module is module and r.layout is not None]
    if not mapped:
        shapes = [r.output_shape for r in records if r.module is module]
        raise TargetLayerError(
            f"target layer {name!r} outputs {_shown(shapes[-1] if shapes else None)}, not a spatial map "
            f"(N x C x H x W, N x H x W x C or patch tokens) in {type(model).__name__}; {listed}"
        )
    record = mapped[-1]
    if (
        record.layout is not None
        and record.layout.kind != "nchw"
        and patch_gradients(model, example, [record], records)[name] == 0
    ):
        raise TargetLayerError(
            f"target layer {name!r} does not reach the prediction: the gradient on its map is zero "
            f"(in a ViT the last block only passes its class token on); {listed}"
        )
    return record
