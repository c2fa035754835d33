"""Detect a global-average-pool + linear head, where Grad-CAM equals CAM.

For logits = W . mean_hw(A) + b, the gradient of logit c w.r.t. A_k(i, j) is
W[c, k] / HW everywhere, so Grad-CAM = ReLU(sum_k W[c, k] A_k) / HW: no backward
pass at all. The head is found from the model itself: the last ``nn.Linear`` run
after the target layer is the candidate, and the head is then evaluated on probe
activations to prove that logits really are affine in the pooled map.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .capture import capture_activation, replace_activation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinearHead:
    """logits = weight @ mean_hw(A) + bias, verified on probes."""

    weight: torch.Tensor  # K x C

    def cam(self, activations: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """CAM of each (row, target) pair before the ReLU: M x h x w, equal to Grad-CAM's sum."""
        acts = activations[rows]  # M x C x h x w
        area = acts.shape[2] * acts.shape[3]
        return torch.einsum("mc,mchw->mhw", self.weight[targets].to(acts.dtype), acts) / area


def _linears_after(model: nn.Module, layer: nn.Module, example: torch.Tensor) -> list[nn.Linear]:
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod)) for m in model.modules()]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    if layer not in order:
        return []
    after = order[order.index(layer) + 1 :]
    return [m for m in after if isinstance(m, nn.Linear)]


def _head(model: nn.Module, layer: nn.Module, example: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """Logits the model gives when the target layer outputs ``activation``."""
    with torch.inference_mode(), replace_activation(layer, activation):
        return model(example[: activation.shape[0]])


def detect_linear_head(model: nn.Module, layer: nn.Module, example: torch.Tensor) -> LinearHead | None:
    """A verified LinearHead, or None when the head after ``layer`` is anything else."""
    linears = _linears_after(model, layer, example)
    if not linears:
        return None
    linear = linears[-1]
    with torch.inference_mode(), capture_activation(layer, detach_prefix=False) as capture:
        logits = model(example)
    real = capture.take()
    if real.dim() != 4 or linear.in_features != real.shape[1] or linear.out_features != logits.shape[1]:
        return None
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features, device=weight.device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    scale = real.abs().mean().clamp_min(1e-3)
    noise = torch.randn(real.shape, generator=generator).to(real.device, real.dtype)
    # Probes: the real map, a sign-scrambled one (catches ReLUs in the head) and noise at
    # three times the real scale (catches clamps and normalisations).
    probes = [real, real * torch.sign(noise), noise * 3 * scale]
    for probe in probes:
        expected = probe.mean(dim=(2, 3)) @ weight.T + bias
        got = _head(model, layer, example, probe)
        tolerance = 1e-4 * expected.abs().max().clamp_min(1.0)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=float(tolerance)):
            logger.info("head after the target layer is not pool + linear: using autograd Grad-CAM")
            return None
    logger.info("head is global-average-pool + linear: Grad-CAM is computed as CAM, without backward")
    return LinearHead(weight=weight)
