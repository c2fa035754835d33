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
from .layers import LayerRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinearHead:
    """logits = weight @ mean_hw(A) + bias, verified on probes."""

    weight: torch.Tensor  # K x C

    def gradient(self, targets: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
        """d logit[target] / dA for each (target, map) pair: W[target, k] / HW, the same at every cell.

        M x C x 1 x 1: it broadcasts against the M x C x h x w activations, so the variants'
        formulas work on it without a full-size gradient.
        """
        area = activations.shape[2] * activations.shape[3]
        weight = self.weight.index_select(0, targets)
        if weight.dtype != activations.dtype:
            weight = weight.to(activations.dtype)
        return (weight / area).view(*weight.shape, 1, 1)


def _head(model: nn.Module, layer: nn.Module, example: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """Logits the model gives when the target layer outputs ``activation``."""
    with torch.inference_mode(), replace_activation(layer, activation):
        return model(example)


def detect_linear_head(
    model: nn.Module, layer: nn.Module, example: torch.Tensor, records: list[LayerRecord]
) -> LinearHead | None:
    """A verified LinearHead, or None when the head after ``layer`` is anything else.

    ``records`` is the probe trace of the model (completion order) on ``example`` (batch 1).
    """
    modules = [r.module for r in records]
    if layer not in modules:
        return None
    linears = [m for m in modules[modules.index(layer) + 1 :] if isinstance(m, nn.Linear)]
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
    probes = torch.cat([real, real * torch.sign(noise), noise * 3 * scale])
    expected = probes.mean(dim=(2, 3)) @ weight.T + bias
    got = _head(model, layer, example.expand(len(probes), *example.shape[1:]), probes)
    tolerance = 1e-4 * expected.abs().max().clamp_min(1.0)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=float(tolerance)):
        logger.info("head after the target layer is not pool + linear: using autograd Grad-CAM")
        return None
    logger.info("head is global-average-pool + linear: Grad-CAM is computed as CAM, without backward")
    return LinearHead(weight=weight)
