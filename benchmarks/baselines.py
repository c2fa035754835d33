"""What a user would otherwise reach for (Captum, pytorch-grad-cam), each used as its documentation shows.

All take the model as a user has it (trainable parameters, eval mode) and one batch,
and produce the prediction plus one map per image for the predicted class.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import GuidedGradCam, LayerGradCam
from pytorch_grad_cam import GradCAM
from torch import nn


def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The plain prediction every path is compared with: ``model(x)`` under inference mode."""
    with torch.inference_mode():
        return model(images)


def input_gradient(frozen: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The floor of any input-resolution gradient method: one forward recording the graph and
    one backward to the input, for the predicted classes, on a frozen model (no weight grads)."""
    inputs = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = frozen(inputs)
        score = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
        (gradients,) = torch.autograd.grad(score, inputs)
    return gradients


def _predicted_classes(model: nn.Module, images: torch.Tensor) -> list[int]:
    return predict(model, images).argmax(dim=1).tolist()


def captum_gradcam(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Captum: a prediction forward, then ``LayerGradCam.attribute`` for the predicted classes."""
    targets = _predicted_classes(model, images)
    return LayerGradCam(model, layer).attribute(images, target=targets, relu_attributions=True).detach()


def captum_guided_gradcam(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Captum: a prediction forward, then ``GuidedGradCam.attribute`` (a fresh object per call:
    GuidedBackprop keeps every hook handle it ever created on the object)."""
    targets = _predicted_classes(model, images)
    return GuidedGradCam(model, layer).attribute(images, target=targets).detach()


def pytorch_grad_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam's README usage; ``targets=None`` explains the top class of its own forward."""
    with GradCAM(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=images, targets=None)
