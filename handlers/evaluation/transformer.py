"""Do Grad-CAM maps on a vision transformer point at the defects? The ViT of ``inspection/vit.py``.

The same held-out images and scores as the CNN's (``localisation``), at the layer the engine
discovers for a transformer (the last map whose cells reach the head: in a ViT the last
block's first norm), then the layer rule itself: Grad-CAM at every block's first norm, every
block's output and the final norm. A layer whose patch tokens do not reach the class score
(the last block's output and the final norm, which pass only the class token on) gets zero
gradients, hence all-zero maps; the engine refuses it by name, and the table shows the
largest gradient on its patch tokens to say why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..engine import Explainer, MethodParams, TargetLayerError
from ..inspection import CLASSES, INPUT_SIZE
from ..inspection.synthetic import Sample, to_tensor
from ..inspection.vit import VIT_WEIGHTS_FILE, InspectionViT, load_vit
from .localisation import Localisation, MethodScore, localisation, score_method

logger = logging.getLogger(__name__)

# The gradient-CAM methods scored on the ViT at its default layer, and EigenCAM (class-agnostic).
VIT_METHODS = ("gradcam", "hirescam", "gradcam_plusplus", "xgradcam", "layercam", "eigencam")
REACH_IMAGES = 50  # images for the largest patch-token gradient of each layer (0 is 0 on any image)


@dataclass(frozen=True)
class LayerScore:
    """Grad-CAM at one layer of the ViT: its role, how strongly it reaches the score, and its maps' scores.

    ``reach``: the largest |d score / d patch token| over REACH_IMAGES images, for the
    explained class; ``score`` is None when the engine refuses the layer (``refusal`` says why).
    """

    layer: str
    role: str  # "first norm" (block's norm1), "block output" or "final norm"
    reach: float
    score: MethodScore | None
    refusal: str | None


@dataclass(frozen=True)
class ViTEvaluation:
    """Everything the report says about the ViT: its training report, default layer and scores."""

    training: dict
    parameters: int
    grid: tuple[int, int]
    default_layer: str
    outcome: Localisation  # Grad-CAM at the default layer (and Guided Grad-CAM), as for the CNN
    methods: tuple[MethodScore, ...]  # VIT_METHODS at the default layer
    layers: tuple[LayerScore, ...]

    @property
    def best_layer(self) -> LayerScore:
        """The layer whose Grad-CAM maps point at the defect most often (the first of equals)."""
        scored = [s for s in self.layers if s.score is not None]
        return max(scored, key=lambda s: s.score.pointing_rate if s.score else 0.0)


def studied_layers(model: InspectionViT) -> list[tuple[str, str]]:
    """(name, role) of every block's first norm, every block's output and the final norm, in depth order."""
    depth = len(model.blocks)
    return [
        *((f"blocks.{i}.norm1", "first norm") for i in range(depth)),
        *((f"blocks.{i}", "block output") for i in range(depth)),
        ("norm", "final norm"),
    ]


def patch_reach(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: Sequence[int]) -> float:
    """Largest |gradient| of the target class scores on ``layer``'s patch tokens (the class token dropped)."""
    found: list[float] = []

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        output.register_hook(lambda grad: found.append(float(grad[:, 1:].abs().amax())))

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(images.clone().requires_grad_(True))
            logits.gather(1, torch.tensor(targets)[:, None]).sum().backward()
    finally:
        handle.remove()
    return max(found)


def evaluate_vit(samples: Sequence[Sample], training: dict) -> ViTEvaluation:
    """Score the committed ViT on ``samples`` (the CNN's held-out set) at its default layer and per layer."""
    model = load_vit()
    parameters = sum(p.numel() for p in model.parameters())
    explainer = Explainer(model, (INPUT_SIZE, INPUT_SIZE))
    outcome = localisation(model, samples)
    single = [samples[d.index] for d in outcome.defects]
    explained = [d.explained for d in outcome.defects]
    methods = tuple(score_method(explainer, single, explained, m, MethodParams()) for m in VIT_METHODS)
    for score in methods:
        logger.info("ViT %s at %s: pointing game %.1f%%", score.method, explainer.layer_name, 100 * score.pointing_rate)
    images = to_tensor([s.image for s in single[:REACH_IMAGES]])
    targets = [CLASSES.index(c) for c in explained[:REACH_IMAGES]]
    modules = dict(model.named_modules())
    layers = []
    for name, role in studied_layers(model):
        reach = patch_reach(model, modules[name], images, targets)
        try:
            at_layer = Explainer(model, (INPUT_SIZE, INPUT_SIZE), target_layer=name)
        except TargetLayerError as refused:
            layers.append(LayerScore(name, role, reach, None, str(refused).split(";")[0]))
            continue
        score = score_method(at_layer, single, explained, "gradcam", MethodParams())
        layers.append(LayerScore(name, role, reach, score, None))
        logger.info("ViT Grad-CAM at %s: pointing game %.1f%%", name, 100 * score.pointing_rate)
    grid = tuple(explainer.explained.layers[explainer.layer_name].shape[2:])
    return ViTEvaluation(
        training, parameters, (grid[0], grid[1]), explainer.layer_name, outcome, methods, tuple(layers)
    )


def vit_training_report() -> dict:
    """The JSON report ``python -m handlers.inspection.vit`` wrote next to the committed weights."""
    return json.loads(VIT_WEIGHTS_FILE.with_suffix(".json").read_text())
