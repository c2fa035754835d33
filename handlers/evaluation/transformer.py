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

import numpy as np
import torch
from torch import nn

from ..engine import Explainer, MethodParams, TargetLayerError
from ..inspection import CLASSES, INPUT_SIZE
from ..inspection.synthetic import Sample, to_tensor
from ..inspection.vit import VIT_WEIGHTS_FILE, InspectionViT, load_vit
from .localisation import DEFECTS, Localisation, MethodScore, localisation, score_method
from .maps import points_into, tolerance_region

logger = logging.getLogger(__name__)

# The gradient-CAM methods scored on the ViT at its default layer, and EigenCAM (class-agnostic).
VIT_METHODS = ("gradcam", "hirescam", "gradcam_plusplus", "xgradcam", "layercam", "eigencam")
REACH_IMAGES = 50  # images for the largest patch-token gradient of each layer (0 is 0 on any image)
_CHUNK = 100  # images per forward + backward of the sign check, to bound memory


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
class SignCheck:
    """Grad-CAM's signed map (before its ReLU) at the default layer, on the images of one defect kind.

    Pointing-game rates of ReLU(+map) (Grad-CAM itself), of ReLU(-map), and of the per-cell
    gradient norm |d score / d token|: whether the evidence is in the gradient but on the
    side of the sign that Grad-CAM's ReLU drops.
    """

    kind: str
    images: int
    positive: float
    negative: float
    gradient: float


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
    signs: tuple[SignCheck, ...]

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


def _tokens_and_gradients(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer``'s token output (N x T x C) and the gradient of the target class scores on it."""
    kept: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        kept["activations"] = output.detach()
        output.register_hook(lambda grad: kept.__setitem__("gradients", grad))

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(images.clone().requires_grad_(True))
            logits.gather(1, torch.tensor(targets)[:, None]).sum().backward()
    finally:
        handle.remove()
    return kept["activations"], kept["gradients"]


def patch_reach(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: Sequence[int]) -> float:
    """Largest |gradient| of the target class scores on ``layer``'s patch tokens (the class token dropped)."""
    _, gradients = _tokens_and_gradients(model, layer, images, targets)
    return float(gradients[:, 1:].abs().amax())


def signed_gradcam(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: Sequence[int], grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM before its ReLU (sum over channels of mean-gradient weight x activation) and the
    per-cell gradient norm, both N x h x w, for a token layer with one class token."""
    tokens, token_gradients = _tokens_and_gradients(model, layer, images, targets)
    shape = (len(images), *grid, -1)
    activations = tokens[:, 1:].reshape(shape)
    gradients = token_gradients[:, 1:].reshape(shape)
    signed = (gradients.mean(dim=(1, 2), keepdim=True) * activations).sum(-1)
    return signed, gradients.norm(dim=-1)


def sign_checks(
    model: nn.Module, layer: nn.Module, samples: Sequence[Sample], explained: Sequence[str], grid: tuple[int, int]
) -> tuple[SignCheck, ...]:
    """Per defect kind, where ReLU(+signed Grad-CAM), ReLU(-signed Grad-CAM) and the gradient norm point."""
    rows: dict[str, list[tuple[bool, bool, bool]]] = {kind: [] for kind in DEFECTS}
    for start in range(0, len(samples), _CHUNK):
        chunk = samples[start : start + _CHUNK]
        targets = [CLASSES.index(c) for c in explained[start : start + _CHUNK]]
        signed, norm = signed_gradcam(model, layer, to_tensor([s.image for s in chunk]), targets, grid)
        for sample, plus, magnitude in zip(chunk, signed, norm, strict=True):
            region = tolerance_region(sample.masks[sample.kind], grid)
            rows[sample.kind].append(
                (
                    points_into(torch.relu(plus), region),
                    points_into(torch.relu(-plus), region),
                    points_into(magnitude, region),
                )
            )
    return tuple(
        SignCheck(kind, len(hits), *(float(np.mean(column)) for column in zip(*hits, strict=True)))
        for kind, hits in rows.items()
        if hits  # a kind with no images in ``samples`` has no row
    )


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
    shape = explainer.explained.layers[explainer.layer_name].shape
    grid = (int(shape[2]), int(shape[3]))
    signs = sign_checks(model, explainer.layer, single, explained, grid)
    return ViTEvaluation(training, parameters, grid, explainer.layer_name, outcome, methods, tuple(layers), signs)


def vit_training_report() -> dict:
    """The JSON report ``python -m handlers.inspection.vit`` wrote next to the committed weights."""
    return json.loads(VIT_WEIGHTS_FILE.with_suffix(".json").read_text())
