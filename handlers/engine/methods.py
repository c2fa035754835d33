"""The explanation methods: each lives here, in one class, registered by name.

A method runs ONE forward pass for its group of samples, returns the logits of that
pass (the prediction) and the raw maps. Adding a method is one class + one line in
``METHODS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from captum.attr import LayerAttribution
from torch import nn

from .capture import capture_activation
from .guided import GuidedReLUMode, GuideSwitch
from .linear_head import LinearHead


@dataclass(frozen=True)
class ModelView:
    """What a method needs to know about the model being explained."""

    model: nn.Module
    layer: nn.Module
    layer_name: str
    linear_head: LinearHead | None


def _long(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


@dataclass(frozen=True)
class TargetSlots:
    """Targets of a group flattened to (row, target) pairs; slot j holds each row's j-th target."""

    rows: torch.Tensor  # M, sample index within the group
    targets: torch.Tensor  # M, class index
    slots: tuple[torch.Tensor, ...]  # per slot: positions (into rows/targets) it covers

    @classmethod
    def build(cls, targets_per_row: Sequence[Sequence[int]], device: torch.device) -> TargetSlots:
        rows, targets, slot_of = [], [], []
        for row, row_targets in enumerate(targets_per_row):
            for slot, target in enumerate(row_targets):
                rows.append(row)
                targets.append(target)
                slot_of.append(slot)
        slot_ids = torch.tensor(slot_of, dtype=torch.long)
        depth = max((len(t) for t in targets_per_row), default=0)
        slots = tuple(torch.nonzero(slot_ids == j).flatten().to(device) for j in range(depth))
        return cls(_long(rows, device), _long(targets, device), slots)

    def score(self, logits: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Sum of the slot's target logits: its gradient gives each row its own target's."""
        return logits[self.rows[slot], self.targets[slot]].sum()


Resolver = Callable[[torch.Tensor], list[list[int]]]
MethodOutput = tuple[torch.Tensor, TargetSlots, torch.Tensor | None]


class Method(ABC):
    """An explanation method: one forward for a group of samples, then its maps."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, view: ModelView, images: torch.Tensor, resolve: Resolver) -> MethodOutput:
        """Return (logits N x K, the resolved targets, raw maps M x h x w or None).

        ``resolve(logits)`` turns the pass's logits into each row's target list, so default
        targets (the top predictions) come from the same forward that explains them.
        """


class NoExplanation(Method):
    """Prediction only: no explanation cost at all."""

    name = "none"

    def run(self, view: ModelView, images: torch.Tensor, resolve: Resolver) -> MethodOutput:
        with torch.inference_mode():
            logits = view.model(images)
        return logits, TargetSlots.build([[] for _ in range(len(images))], images.device), None


def _gradcam_from_gradients(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Captum LayerGradCam's formula: ReLU(sum_k mean_hw(dS/dA_k) * A_k), M x h x w."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1))


class GradCam(Method):
    """Grad-CAM on the target layer, from the forward that predicts.

    With a verified pool + linear head this is CAM inside inference mode (no autograd);
    otherwise autograd records only the head after the layer (frozen parameters) and one
    cheap head-only backward runs per target slot.
    """

    name = "gradcam"

    def run(self, view: ModelView, images: torch.Tensor, resolve: Resolver) -> MethodOutput:
        if view.linear_head is not None:
            with torch.inference_mode(), capture_activation(view.layer, detach_prefix=False) as capture:
                logits = view.model(images)
                slots = TargetSlots.build(resolve(logits), images.device)
                maps = torch.relu(view.linear_head.cam(capture.take(), slots.rows, slots.targets))
            return logits, slots, maps
        with torch.enable_grad(), capture_activation(view.layer, detach_prefix=True) as capture:
            logits = view.model(images)
            slots = TargetSlots.build(resolve(logits.detach()), images.device)
            activations = capture.take()
            maps = torch.empty((len(slots.rows), *activations.shape[2:]), device=images.device)
            for j, slot in enumerate(slots.slots):
                (grads,) = torch.autograd.grad(
                    slots.score(logits, slot), activations, retain_graph=j + 1 < len(slots.slots)
                )
                rows = slots.rows[slot]
                maps[slot] = _gradcam_from_gradients(activations[rows].detach(), grads[rows])
        return logits.detach(), slots, maps


class GuidedGradCam(Method):
    """Guided Backprop x nearest-upsampled Grad-CAM (Captum GuidedGradCam), one forward.

    The forward records the whole graph with guided ReLUs in place; per target slot, the
    layer gradient is taken with the guide disarmed (plain Grad-CAM) and the input
    gradient with it armed (guided backprop). Channels are aggregated as max |value|,
    the usual saliency convention, giving an input-resolution M x H x W map.
    """

    name = "guided_gradcam"

    def run(self, view: ModelView, images: torch.Tensor, resolve: Resolver) -> MethodOutput:
        switch = GuideSwitch()
        inputs = images.detach().clone().requires_grad_(True)
        with torch.enable_grad(), capture_activation(view.layer, detach_prefix=False) as capture:
            with GuidedReLUMode(switch):
                logits = view.model(inputs)
            slots = TargetSlots.build(resolve(logits.detach()), images.device)
            activations = capture.take()
            maps = torch.empty((len(slots.rows), *images.shape[2:]), device=images.device)
            for j, slot in enumerate(slots.slots):
                score = slots.score(logits, slot)
                switch.armed = False
                (layer_grads,) = torch.autograd.grad(score, activations, retain_graph=True)
                switch.armed = True
                (input_grads,) = torch.autograd.grad(score, inputs, retain_graph=j + 1 < len(slots.slots))
                rows = slots.rows[slot]
                cam = _gradcam_from_gradients(activations[rows].detach(), layer_grads[rows]).unsqueeze(1)
                upsampled = LayerAttribution.interpolate(cam, tuple(images.shape[2:]), interpolate_mode="nearest")
                maps[slot] = (input_grads[rows] * upsampled).abs().amax(dim=1)
        return logits.detach(), slots, maps


METHODS: dict[str, Method] = {method.name: method for method in (NoExplanation(), GradCam(), GuidedGradCam())}
