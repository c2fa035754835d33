"""Model-parameter randomisation test (Adebayo et al., 2018, "Sanity Checks for Saliency Maps").

The layers of the trained model are re-initialised top-down, one more at each step
(cascading), and each image's map for the class the trained model predicted is compared
with its original by Spearman rank correlation. A map that explains the model must
change when the model it explains is destroyed; one that does not is an edge detector.

A step re-initialises one learnable layer (a BatchNorm goes with the convolution before
it) with PyTorch's own initialisation (``reset_parameters``, seeded): the state a
training run starts from.

Besides our two methods, Captum's plain Guided Backprop is measured as a reference: it
is the fine-detail factor of Guided Grad-CAM, and the method Adebayo et al. found
insensitive to the model. It is exact only where every ReLU is an ``nn.ReLU`` module, as
in the default model.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import GuidedBackprop
from scipy.stats import spearmanr
from torch import nn

from ..engine import Explainer, Job
from .maps import is_degenerate

logger = logging.getLogger(__name__)

GUIDED_BACKPROP = "guided_backprop"  # Captum's, the reference
METHODS = ("gradcam", "guided_gradcam", GUIDED_BACKPROP)
RANDOMISATION_SEED = 0
_CHUNK = 50


@dataclass(frozen=True)
class Layer:
    """The modules one cascade step re-initialises, under a display name."""

    name: str
    modules: tuple[nn.Module, ...]


@dataclass(frozen=True)
class Step:
    """Maps after randomising every layer down to ``layer``, against the trained model's maps.

    ``rho[m]``: per image, Spearman's rho between the original and the randomised map of
    method m, NaN where either map is constant (rank correlation is undefined there);
    ``constant[m]``: how many randomised maps are constant.
    """

    layer: str
    rho: dict[str, np.ndarray]
    constant: dict[str, int]

    def median(self, method: str) -> float:
        """Median rho over the images whose maps are not constant (NaN if none is)."""
        values = self.rho[method][~np.isnan(self.rho[method])]
        return float(np.median(values)) if len(values) else float("nan")


def cascade_layers(model: nn.Module) -> list[Layer]:
    """The model's learnable layers, output side first; a BatchNorm joins the layer before it."""
    groups: list[list[tuple[str, nn.Module]]] = []
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is None:
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and groups:
            groups[-1].append((name, module))
        else:
            groups.append([(name, module)])
    layers = [Layer(" + ".join(n for n, _ in group), tuple(m for _, m in group)) for group in groups]
    return layers[::-1]


def _guided_backprop(model: nn.Module, images: torch.Tensor, targets: Sequence[int]) -> list[torch.Tensor]:
    """Captum's Guided Backprop, channels aggregated as max |value| like the engine's maps."""
    attribution = GuidedBackprop(model).attribute(images.clone(), target=list(targets))
    return list(attribution.detach().abs().amax(dim=1))


def _maps(
    model: nn.Module, size: tuple[int, int], images: torch.Tensor, targets: Sequence[int], method: str
) -> list[torch.Tensor]:
    """Each image's map of ``method`` for its target, on the model as it is now."""
    if method == GUIDED_BACKPROP:
        return _guided_backprop(model, images, targets)
    explainer = Explainer(model, size)
    maps: list[torch.Tensor] = []
    for start in range(0, len(images), _CHUNK):
        jobs = [Job(method, (t,)) for t in targets[start : start + _CHUNK]]
        maps += [r.explanations[0].values for r in explainer.explain(images[start : start + _CHUNK], jobs)]
    return maps


def _spearman(original: torch.Tensor, randomised: torch.Tensor) -> float:
    if is_degenerate(original) or is_degenerate(randomised):
        return float("nan")
    return float(spearmanr(original.flatten().numpy(), randomised.flatten().numpy()).statistic)


def randomisation_test(model: nn.Module, images: torch.Tensor, methods: Sequence[str] = METHODS) -> list[Step]:
    """Cascading randomisation of a trained eval-mode ``model``, explained at the predicted class.

    ``model`` itself is not modified: the cascade runs on a copy.
    """
    size = (int(images.shape[-2]), int(images.shape[-1]))
    model = copy.deepcopy(model).eval()
    with torch.inference_mode():
        targets = model(images).argmax(1).tolist()
    originals = {m: _maps(model, size, images, targets, m) for m in methods}
    steps = []
    for depth, layer in enumerate(cascade_layers(model)):
        torch.manual_seed(RANDOMISATION_SEED + depth)
        for module in layer.modules:
            reset = module.reset_parameters
            assert callable(reset), f"{type(module).__name__} has no reset_parameters()"
            reset()
        rho, constant = {}, {}
        for method in methods:
            randomised = _maps(model, size, images, targets, method)
            rho[method] = np.array([_spearman(a, b) for a, b in zip(originals[method], randomised, strict=True)])
            constant[method] = sum(is_degenerate(b) for b in randomised)
        steps.append(Step(layer.name, rho, constant))
        medians = {m: round(steps[-1].median(m), 3) for m in methods}
        logger.info("randomised down to %s: median rho %s", layer.name, medians)
    return steps
