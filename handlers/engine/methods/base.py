"""What every explanation method shares: the model it explains, its targets, its contract.

A method runs ONE forward pass for its group of samples (plus what it needs on top: a
head-only backward, an input backward, perturbed forwards), returns the logits of the
unperturbed pass (the prediction) and its raw maps. Adding a method is one class in one
module of this package and one line in the registry (``methods/__init__.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch
from torch import nn

from ..capture import ActivationCapture, capture_activation
from ..layers import MapLayout
from ..linear_head import LinearHead
from ..row_limits import RowLimit


class MethodError(ValueError):
    """A method can't explain this request (wrong parameters, a cap exceeded): one request's 400."""


@dataclass(frozen=True)
class MapLayer:
    """A named module whose output is a channels-first N x C x H x W map."""

    module: nn.Module
    shape: tuple[int, ...]  # its map for one image: 1 x C x H x W
    layout: MapLayout


@dataclass(frozen=True)
class MethodLimits:
    """Per-model caps on what one request may make a method spend."""

    max_occlusion_forwards: int = 1024  # perturbed forwards per image, all its targets together
    max_ig_steps: int = 64  # integrated-gradients steps
    max_faithfulness_steps: int = 32  # deletion / insertion steps of the faithfulness measure


@dataclass(frozen=True)
class ExplainedModel:
    """What a method needs to know about the model being explained."""

    model: nn.Module
    layer: nn.Module
    layer_name: str
    layout: MapLayout  # how the layer's output is read as an N x C x H x W map
    linear_head: LinearHead | None
    input_size: tuple[int, int]
    layers: dict[str, MapLayer]  # every module with a channels-first map output, last first
    limits: MethodLimits
    row_limits: tuple[RowLimit, ...] = ()  # token-wise modules back-propagated for the read tokens only
    # Layers whose output the forward writes in place later (capture.written_in_place); None: not
    # probed, so every capture copies.
    written_in_place: frozenset[nn.Module] | None = None

    def capture(
        self, layer: nn.Module, detach_prefix: bool, layout: MapLayout
    ) -> AbstractContextManager[ActivationCapture]:
        """``capture_activation`` of ``layer``, copying its output only where the forward writes it later."""
        copy = self.written_in_place is None or layer in self.written_in_place
        return capture_activation(layer, detach_prefix, layout, copy)


@dataclass(frozen=True)
class MethodParams:
    """Per-request settings of the methods that take any; requests with equal params share a pass.

    ``layer``/``channel``/``channels``: activations (which layer, one channel, how many of the
    most activated); ``window``/``stride``: occlusion (pixels); ``steps``: integrated gradients.
    """

    layer: str | None = None
    channel: int | None = None
    channels: int = 16
    window: int | None = None
    stride: int | None = None
    steps: int = 16


def _long(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


@dataclass(frozen=True)
class TargetSlots:
    """Targets of a group flattened to (row, target) pairs; ``by_depth[j]`` holds each row's j-th target."""

    rows: torch.Tensor  # M, sample index within the group
    targets: torch.Tensor  # M, class index (or channel index, for activations)
    depth_of: tuple[int, ...]  # M, which of its row's targets each pair is
    one_per_row: bool = False  # exactly one target per row, in row order: rows is 0..N-1

    @classmethod
    def build(cls, targets_per_row: Sequence[Sequence[int]], device: torch.device) -> TargetSlots:
        rows, targets, depth_of = [], [], []
        for row, row_targets in enumerate(targets_per_row):
            for depth, target in enumerate(row_targets):
                rows.append(row)
                targets.append(target)
                depth_of.append(depth)
        one_per_row = rows == list(range(len(targets_per_row)))
        pairs = torch.tensor((rows, targets), dtype=torch.long, device=device)  # one copy to the device, not two
        return cls(pairs[0], pairs[1], tuple(depth_of), one_per_row)

    @classmethod
    def per_row(cls, targets: torch.Tensor) -> TargetSlots:
        """Slots for an N x k tensor of targets (k for every row), built without a Python loop."""
        n, k = targets.shape
        rows = torch.arange(n, device=targets.device)[:, None].expand(n, k).flatten()
        return cls(rows, targets.flatten(), tuple(range(k)) * n, k == 1)

    @cached_property
    def by_depth(self) -> tuple[torch.Tensor, ...]:
        """Per depth j, the positions (into rows/targets) of each row's j-th target; built when a
        method back-propagates per depth, not for those that never ask (activations: 16 depths)."""
        if self.one_per_row:
            return (torch.arange(len(self.depth_of), device=self.rows.device),)
        positions: list[list[int]] = [[] for _ in range(max(self.depth_of, default=-1) + 1)]
        for position, depth in enumerate(self.depth_of):
            positions[depth].append(position)
        return tuple(_long(p, self.rows.device) for p in positions)

    def seed(self, logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The gradient of the sum of these positions' target logits w.r.t. ``logits``: a one-hot
        per pair, handed to autograd as the output gradient, so each row gets its own target's
        gradient without indexing and summing nodes to record and back-propagate."""
        seed = torch.zeros_like(logits)
        if self.one_per_row:  # one depth holding every row, in order
            return seed.scatter_(1, self.targets.unsqueeze(1), 1.0)
        seed[self.rows[positions], self.targets[positions]] = 1.0
        return seed


Resolver = Callable[[torch.Tensor], list[list[int]]]


@dataclass(frozen=True)
class MethodOutput:
    """Logits of the unperturbed pass, the (row, target) pairs explained and their raw maps (M x h x w)."""

    logits: torch.Tensor
    slots: TargetSlots
    maps: torch.Tensor | None
    stats: torch.Tensor | None = None  # M x 2 (mean, max) per map, where the method reports them


class Method(ABC):
    """An explanation method: one forward for a group of samples, then its maps."""

    name: ClassVar[str]
    summary: ClassVar[str]  # what the map shows, one line (model description, README)
    # What each map is of: "class" (one per target class), "channel" (one per channel shown),
    # "image" (one per image, class-agnostic), "nothing" (no map: prediction only).
    explains: ClassVar[str] = "class"
    resolution: ClassVar[str] = "layer"  # "layer": the explained layer's grid; "input": the model input's; "none"
    passes: ClassVar[str]  # the passes it costs, in words
    uses_layer: ClassVar[bool] = True  # whether its maps come from the explained layer
    params: ClassVar[tuple[str, ...]] = ()  # the MethodParams fields a request may set for it
    guided: ClassVar[bool] = False  # uses guided backpropagation (a note when the model is not all ReLU)
    # Whether a row that ``resolve`` gives no target costs only its share of the predicting forward
    # (maps and backward passes for resolved rows only), so a cost policy can decide inside that pass.
    resolves_in_prediction_pass: ClassVar[bool] = False

    @abstractmethod
    def run(self, model: ExplainedModel, images: torch.Tensor, resolve: Resolver, params: MethodParams) -> MethodOutput:
        """Explain ``images``; ``resolve(logits)`` turns the pass's logits into each row's targets,
        so default targets (the top predictions) come from the same forward that explains them."""

    @property
    def class_specific(self) -> bool:
        """Whether the map depends on a target class (``target`` applies)."""
        return self.explains == "class"

    def available(self, model: ExplainedModel) -> bool:
        """Whether this method can explain ``model`` at all (listed in its description)."""
        return True

    def backpropagates(self, model: ExplainedModel) -> bool:
        """Whether ``run`` takes gradients through ``model`` (the one-image norm fix applies: norm_gradients.py)."""
        return False

    def forward_rows(self, model: ExplainedModel, params: MethodParams, targets: int) -> int:
        """Forward passes of one image that ``run`` costs for ``targets`` maps, a backward counted as two:
        what a batch's time budget adds up (handlers/serving/budget.py)."""
        return 1 + 2 * max(targets, 1) if self.backpropagates(model) else 1

    def check(self, model: ExplainedModel, params: MethodParams, targets: int) -> None:  # noqa: B027 - optional
        """Raise MethodError when this method can't serve ``params`` with ``targets`` maps per image
        on ``model``: called per request before any pass, so a refusal is that request's alone."""


def predict(model: ExplainedModel, images: torch.Tensor) -> torch.Tensor:
    """Logits of a plain forward in inference mode."""
    with torch.inference_mode():
        return model.model(images)
