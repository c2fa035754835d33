"""Guided backpropagation and Guided Grad-CAM, from one forward with guided ReLUs in place.

The forward records the whole graph inside ``GuidedReLUMode``; per target depth the input
gradient is taken with the guide armed (guided backprop) and, for Guided Grad-CAM, the layer
gradient with it disarmed (plain Grad-CAM). Channels are aggregated as max |value|, the usual
saliency convention, giving input-resolution M x H x W maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..guided import GuidedReLUMode, GuideSwitch
from .base import ExplainedModel, Method, MethodOutput, MethodParams, Resolver, TargetSlots
from .gradient_cams import GradCam

_GRADCAM = GradCam()


def _input_leaf(images: torch.Tensor) -> torch.Tensor:
    """``images`` as a leaf that requires grad, sharing their memory: no copy of the batch. A model
    that writes its input in place can't run a backward to it anyway (autograd refuses the in-place
    op on a leaf before it changes anything), so the caller's batch is never modified. A batch made
    under ``torch.inference_mode`` can't require grad: that one is copied."""
    leaf = images.clone() if images.is_inference() else images.detach()
    return leaf.requires_grad_(True)


def _saliency(input_grads: torch.Tensor, rows: torch.Tensor, every_row: bool) -> torch.Tensor:
    """max |gradient| over colour channels of ``rows`` (M x H x W), reduced before gathering.

    |.| is taken in place on the gradient autograd has just returned (nobody else holds it): no
    input-sized temporary. Guided Grad-CAM scales this by the non-negative upsampled CAM, which
    commutes with |.| and max.
    """
    saliency = input_grads.abs_().amax(dim=1)
    return saliency if every_row else saliency[rows]


def _scale_by_cam(saliency: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """``saliency`` (M x H x W) times the nearest-upsampled ``cam`` (M x h x w), in place.

    Where the input is a power-of-two multiple of the map (128 / 16, 224 / 7), nearest upsampling
    repeats each cell over a block exactly (its source index is a shift), so the blocks are scaled
    without an upsampled copy; other sizes go through ``F.interpolate``.
    """
    m, height, width = saliency.shape
    h, w = cam.shape[1:]
    factors = (height // h, width // w)
    if all(f * n == size and f & (f - 1) == 0 for f, n, size in zip(factors, (h, w), (height, width), strict=True)):
        saliency.view(m, h, factors[0], w, factors[1]).mul_(cam[:, :, None, :, None])
        return saliency
    return saliency.mul_(F.interpolate(cam[:, None], size=(height, width), mode="nearest")[:, 0])


class GuidedBackprop(Method):
    """Guided backpropagation (Springenberg et al.): input gradients through ReLUs that pass only
    positive gradients. Detailed, but hardly class-discriminative (the Grad-CAM paper's point)."""

    name = "guided_backprop"
    summary = "Guided backpropagation: fine input-resolution detail the score is sensitive to, barely class-specific"
    resolution = "input"
    passes = "1 forward + 1 backward to the input per target depth"
    uses_layer = False
    guided = True

    def backpropagates(self, model: ExplainedModel) -> bool:
        return True

    def run(self, model: ExplainedModel, images: torch.Tensor, resolve: Resolver, params: MethodParams) -> MethodOutput:
        switch = GuideSwitch()
        switch.armed = True
        inputs = _input_leaf(images)
        with torch.enable_grad():
            with GuidedReLUMode(switch):
                logits = model.model(inputs)
            slots = TargetSlots.build(resolve(logits.detach()), images.device)
            if slots.one_per_row:  # the usual case: one backward, every row
                (grads,) = torch.autograd.grad(logits, inputs, slots.seed(logits, slots.rows))
                return MethodOutput(logits.detach(), slots, _saliency(grads, slots.rows, True))
            maps = torch.empty((len(slots.rows), *images.shape[2:]), device=images.device)
            for j, positions in enumerate(slots.by_depth):
                last = j + 1 == len(slots.by_depth)
                seed = slots.seed(logits, positions)
                (grads,) = torch.autograd.grad(logits, inputs, seed, retain_graph=not last)
                maps[positions] = _saliency(grads, slots.rows[positions], False)
        return MethodOutput(logits.detach(), slots, maps)


class GuidedGradCam(Method):
    """Guided Backprop x nearest-upsampled Grad-CAM (as Captum's GuidedGradCam), one forward."""

    name = "guided_gradcam"
    summary = "Guided Grad-CAM: guided backpropagation masked by Grad-CAM, fine detail of the class evidence"
    resolution = "input"
    passes = "1 forward + per target depth 1 input backward (+ 1 head-only backward unless the head is pool + linear)"
    guided = True

    def backpropagates(self, model: ExplainedModel) -> bool:
        return True

    def run(self, model: ExplainedModel, images: torch.Tensor, resolve: Resolver, params: MethodParams) -> MethodOutput:
        switch = GuideSwitch()
        inputs = _input_leaf(images)
        with torch.enable_grad(), model.capture(model.layer, False, model.layout) as capture:
            with GuidedReLUMode(switch):
                logits = model.model(inputs)
            slots = TargetSlots.build(resolve(logits.detach()), images.device)
            activations = capture.take()
            shape = (len(slots.rows), *images.shape[2:])
            maps = None if slots.one_per_row else torch.empty(shape, device=images.device)
            for j, positions in enumerate(slots.by_depth):
                seed = slots.seed(logits, positions)
                rows = slots.rows[positions]
                row_activations = activations.detach() if slots.one_per_row else activations[rows].detach()
                if model.linear_head is not None:  # pool + linear: the layer gradient needs no backward
                    layer_grads = model.linear_head.gradient(slots.targets[positions], row_activations)
                else:
                    switch.armed = False
                    layer_grads = capture.gradient(logits, seed, retain_graph=True)[rows]
                switch.armed = True
                last = j + 1 == len(slots.by_depth)
                (input_grads,) = torch.autograd.grad(logits, inputs, seed, retain_graph=not last)
                cam = torch.relu(_GRADCAM.combine(row_activations, layer_grads))
                scaled = _scale_by_cam(_saliency(input_grads, rows, slots.one_per_row), cam)
                if maps is None:
                    maps = scaled
                else:
                    maps[positions] = scaled
        return MethodOutput(logits.detach(), slots, maps)
