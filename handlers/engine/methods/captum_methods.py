"""Methods where Captum is the implementation, at run time: occlusion and integrated gradients.

One adapter runs them all the same way: the prediction comes from a plain forward, its targets
are resolved as for every method, each (image, target) pair becomes one row of the batch
Captum attributes, and the N x C x H x W attributions are reduced over colour channels to an
input-resolution map.
"""

from __future__ import annotations

import math

import torch
from captum.attr import IntegratedGradients, Occlusion
from torch import nn

from .base import ExplainedModel, Method, MethodError, MethodOutput, MethodParams, Resolver, TargetSlots, predict

_PERTURBED_BATCH = 32  # images per perturbed forward (occlusion) or per step batch (integrated gradients)


class CaptumMethod(Method):
    """A Captum attribution method served like ours: targets, batching and per-request errors."""

    resolution = "input"
    uses_layer = False
    resolves_in_prediction_pass = True  # attributes the resolved rows only

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: list[int], params: MethodParams
    ) -> torch.Tensor:
        """N x C x H x W attributions of ``inputs`` (one row per target) from Captum."""
        raise NotImplementedError

    def run(self, model: ExplainedModel, images: torch.Tensor, resolve: Resolver, params: MethodParams) -> MethodOutput:
        logits = predict(model, images)
        slots = TargetSlots.build(resolve(logits), images.device)
        if not len(slots.rows):
            return MethodOutput(logits, slots, torch.empty((0, *images.shape[2:]), device=images.device))
        attributions = self.attribute(model.model, images[slots.rows].detach(), slots.targets.tolist(), params)
        return MethodOutput(logits, slots, attributions.detach().sum(dim=1).abs())


def occlusion_geometry(input_size: tuple[int, int], params: MethodParams) -> tuple[int, int, int]:
    """(window, stride, forwards per target) for an input of ``input_size``.

    Default window: an eighth of the shorter side (16 px at 128, 28 at 224), stride half of it.
    Forwards per target are Captum's count: ceil((side - window) / stride) + 1 per side.
    """
    side = min(input_size)
    window = params.window or max(1, round(side / 8))
    stride = params.stride or max(1, window // 2)
    per_side = [math.ceil((length - window) / stride) + 1 for length in input_size]
    return window, stride, per_side[0] * per_side[1]


class OcclusionSensitivity(CaptumMethod):
    """Occlusion (Zeiler & Fergus), through Captum's ``Occlusion``: how the class score drops
    when a window of the image is greyed out (set to the normalised mean), window by window."""

    name = "occlusion"
    summary = "Occlusion: how much the class score drops when each part of the image is hidden"
    passes = "1 forward + 1 perturbed forward per window position and target (batched)"
    params = ("window", "stride")

    def check(self, model: ExplainedModel, params: MethodParams, targets: int) -> None:
        side = min(model.input_size)
        for name, value in (("window", params.window), ("stride", params.stride)):
            if value is not None and not 1 <= value <= side:
                raise MethodError(f"option '{name}' must be from 1 to {side} pixels, got {value}")
        window, stride, forwards = occlusion_geometry(model.input_size, params)
        total = forwards * max(targets, 1)
        cap = model.limits.max_occlusion_forwards
        if total > cap:
            raise MethodError(
                f"occlusion with window {window} and stride {stride} needs {total} forward passes for "
                f"{max(targets, 1)} target(s); this model allows {cap} (max_occlusion_forwards): "
                "ask for a larger window or stride, or fewer targets"
            )

    def forward_rows(self, model: ExplainedModel, params: MethodParams, targets: int) -> int:
        return 1 + occlusion_geometry(model.input_size, params)[2] * max(targets, 1)

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: list[int], params: MethodParams
    ) -> torch.Tensor:
        window, stride, _ = occlusion_geometry((inputs.shape[2], inputs.shape[3]), params)
        channels = inputs.shape[1]
        with torch.inference_mode():
            return Occlusion(model).attribute(
                inputs,
                sliding_window_shapes=(channels, window, window),
                strides=(channels, stride, stride),
                baselines=0.0,
                target=targets,
                perturbations_per_eval=max(1, _PERTURBED_BATCH // len(inputs)),
            )


class IntegratedGradientsMethod(CaptumMethod):
    """Integrated gradients (Sundararajan et al.), through Captum's ``IntegratedGradients``, from a
    black (normalised zero) baseline: what TorchServe's own /explanations computes, with our targets."""

    name = "integrated_gradients"
    summary = "Integrated gradients: each pixel's share of the class score, from a zero baseline"
    passes = "1 forward + `steps` forwards and backwards to the input per target (batched)"
    params = ("steps",)

    def backpropagates(self, model: ExplainedModel) -> bool:
        return True

    def check(self, model: ExplainedModel, params: MethodParams, targets: int) -> None:
        cap = model.limits.max_ig_steps
        if not 1 <= params.steps <= cap:
            raise MethodError(f"option 'steps' must be from 1 to {cap} (max_ig_steps), got {params.steps}")

    def forward_rows(self, model: ExplainedModel, params: MethodParams, targets: int) -> int:
        return 1 + 3 * params.steps * max(targets, 1)  # each step a forward and a backward to the input

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: list[int], params: MethodParams
    ) -> torch.Tensor:
        with torch.enable_grad():
            return IntegratedGradients(model).attribute(
                inputs,
                baselines=0.0,
                target=targets,
                n_steps=params.steps,
                internal_batch_size=max(len(inputs), _PERTURBED_BATCH),
            )
