"""Model-parameter randomisation test (Adebayo et al., 2018, "Sanity Checks for Saliency Maps").

The layers of the trained model are re-initialised top-down, one more at each step
(cascading), and each image's map for the class the trained model predicted is compared
with its original by Spearman rank correlation. A map that explains the model must
change when the model it explains is destroyed; one that does not is an edge detector.

A step re-initialises one learnable layer (a BatchNorm goes with the convolution before
it) with PyTorch's own initialisation (``reset_parameters``, seeded): the state a
training run starts from.

Every method of the registry that draws maps is measured, each at the trained model's
predicted class where it is class-specific. Activations are compared channel for channel
(each image's most activated channel in the trained model); EigenCAM and activations read
only the explained layer, so layers after it cannot change them: they are measured to show
exactly that, not held to the class-specific methods' standard.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from ..engine import Explainer, Job
from ..engine.methods import METHODS as REGISTRY
from ..engine.methods import MethodParams
from .maps import is_degenerate

logger = logging.getLogger(__name__)

METHODS = tuple(name for name, method in REGISTRY.items() if method.explains != "nothing")
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


def randomised_cascade(model: nn.Module) -> Iterator[Layer]:
    """Re-initialise ``model``'s layers in place, output side first, one more per step (seeded per
    step); yields the layer each step has just randomised."""
    for depth, layer in enumerate(cascade_layers(model)):
        torch.manual_seed(RANDOMISATION_SEED + depth)
        for module in layer.modules:
            reset = module.reset_parameters
            assert callable(reset), f"{type(module).__name__} has no reset_parameters()"
            reset()
        yield layer


def _jobs(method: str, keys: Sequence[int], params: MethodParams) -> list[Job]:
    """One job per image: its class for class-specific methods, its channel for activations."""
    if REGISTRY[method].class_specific:
        return [Job(method, (k,), params=params) for k in keys]
    if REGISTRY[method].explains == "channel":
        return [Job(method, params=replace(params, channel=k)) for k in keys]
    return [Job(method, params=params) for _ in keys]


def first_maps(
    explainer: Explainer, images: torch.Tensor, jobs: Sequence[Job], chunk: int = _CHUNK
) -> list[torch.Tensor]:
    """Each image's (first) map for its job, on the model as it is now, ``chunk`` images per call."""
    maps: list[torch.Tensor] = []
    for start in range(0, len(images), chunk):
        results = explainer.explain(images[start : start + chunk], jobs[start : start + chunk])
        maps += [r.explanations[0].values for r in results]
    return maps


def _top_channels(explainer: Explainer, images: torch.Tensor, params: MethodParams) -> list[int]:
    """Each image's most activated channel of the explained layer (activations' own ranking)."""
    results = explainer.explain(images, [Job("activations", params=replace(params, channels=1))] * len(images))
    return [int(r.explanations[0].channel or 0) for r in results]


def _spearman(original: torch.Tensor, randomised: torch.Tensor) -> float:
    if is_degenerate(original) or is_degenerate(randomised):
        return float("nan")
    return float(spearmanr(original.flatten().numpy(), randomised.flatten().numpy()).statistic)


def randomisation_test(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str] = METHODS,
    params: MethodParams | None = None,
    limit: Mapping[str, int] | None = None,
) -> list[Step]:
    """Cascading randomisation of a trained eval-mode ``model``, explained at the predicted class.

    ``params`` tune the methods that take any; ``limit[m]``: method m runs on the first
    ``limit[m]`` images only (the costly ones). ``model`` itself is not modified: the
    cascade runs on a copy.
    """
    size = (int(images.shape[-2]), int(images.shape[-1]))
    params, limit = params or MethodParams(), limit or {}
    model = copy.deepcopy(model).eval()
    with torch.inference_mode():
        targets = model(images).argmax(1).tolist()
    explainer = Explainer(model, size)
    channels = _top_channels(explainer, images, params)
    inputs = {m: images[: limit.get(m, len(images))] for m in methods}
    jobs = {}
    for m in methods:
        keys = channels if REGISTRY[m].explains == "channel" else targets
        jobs[m] = _jobs(m, keys[: len(inputs[m])], params)
    originals = {m: first_maps(explainer, inputs[m], jobs[m]) for m in methods}
    steps = []
    for layer in randomised_cascade(model):
        explainer = Explainer(model, size)
        rho, constant = {}, {}
        for method in methods:
            randomised = first_maps(explainer, inputs[method], jobs[method])
            rho[method] = np.array([_spearman(a, b) for a, b in zip(originals[method], randomised, strict=True)])
            constant[method] = sum(is_degenerate(b) for b in randomised)
        steps.append(Step(layer.name, rho, constant))
        medians = {m: round(steps[-1].median(m), 3) for m in methods}
        logger.info("randomised down to %s: median rho %s", layer.name, medians)
    return steps
