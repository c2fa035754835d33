"""Our maps against independent implementations of the same methods.

References: Captum's ``LayerGradCam`` and ``GuidedGradCam`` and pytorch-grad-cam's
``GradCAM`` (a test dependency, imported only here, inside the function that uses it).
Every comparison is made at the reference's own resolution without resampling: the
target layer's grid for Grad-CAM (pytorch-grad-cam's raw cam, taken before its resize
and min-max scaling) and the input for Guided Grad-CAM (channels aggregated as max |v|,
as the engine does).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedGradCam, LayerGradCam
from torch import nn
from torch.overrides import TorchFunctionMode

from ..engine import Explainer, Job
from ..engine.guided import GuidedReLUMode, GuideSwitch
from .data import EVALUATION_SEED, default_model, held_out_images
from .maps import is_degenerate, minmax

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "inspection"
# torchvision classifiers (random weights), compared at a small input side to keep CI fast:
# 96 px gives 3x3 maps at stride 32 (5x5 for squeezenet1_1); the default model runs at 128 px.
TORCHVISION = (
    "resnet50",
    "googlenet",
    "densenet121",
    "squeezenet1_1",
    "vgg16_bn",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "regnet_y_400mf",
)
SIDE = 96
SUBJECTS = (*TORCHVISION, DEFAULT_MODEL)
BATCH = 8
MODEL_SEED = 0
INPUT_SEED = 1


@dataclass(frozen=True)
class Comparison:
    """Our maps against one reference on one batch.

    ``max_error``: the largest |minmax(ours) - minmax(reference)| over the non-degenerate
    maps; ``max_relative_error``: the largest |ours - reference| / max |reference| over
    all maps (raw values, so degenerate maps are compared too, as all-zero maps exactly).
    """

    reference: str
    method: str
    batch: int  # images in the batch, one map (one target) each
    degenerate: int
    max_error: float
    max_relative_error: float


@dataclass(frozen=True)
class Agreement:
    """All comparisons for one model; ``guided_note`` says why Captum's Guided Grad-CAM was skipped.

    ``relu_calls``: ReLU calls per forward; with none, guided backprop is the plain gradient.
    """

    subject: str
    layer: str
    side: int
    map_size: tuple[int, int]
    targets: tuple[int, ...]
    comparisons: tuple[Comparison, ...]
    guided_note: str | None
    relu_calls: int
    as_shipped: Comparison | None = None  # pytorch-grad-cam without OutOfPlaceReLU, batch 8

    @property
    def max_error(self) -> float:
        """The largest normalised error over all comparisons (``as_shipped`` excluded)."""
        return max(c.max_error for c in self.comparisons)


def build_subject(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The eval-mode model called ``name`` and its input batch (BATCH images), both seeded."""
    if name == DEFAULT_MODEL:
        return default_model(), held_out_images(BATCH, seed=EVALUATION_SEED)
    torch.manual_seed(MODEL_SEED)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    images = torch.randn((BATCH, 3, SIDE, SIDE), generator=torch.Generator().manual_seed(INPUT_SEED))
    return model, images


def distinct_top_targets(logits: torch.Tensor) -> list[int]:
    """Per row, its best-scoring class not already taken by an earlier row.

    Distinct targets prove per-sample targeting inside a batch (with fewer classes than
    rows, targets repeat once every class is taken); high-scoring classes are the ones a
    random-weight model has positive evidence for, so their maps are rarely all zero.
    """
    targets: list[int] = []
    for row in logits.argsort(dim=1, descending=True).tolist():
        cycle = targets[len(targets) - len(targets) % len(row) :]  # with fewer classes than rows, start over
        targets.append(next(c for c in row if c not in cycle))
    return targets


def relu_calls(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(ReLU calls per forward, those made by ``nn.ReLU`` modules), ReLU6 included in the first.

    Captum's guided backprop hooks only ``nn.ReLU`` modules; the engine guides every ReLU
    call (functional F.relu and ReLU6 too). The two are only comparable when both agree.
    """
    module_calls = 0

    def count(*_args) -> None:
        nonlocal module_calls
        module_calls += 1

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.ReLU)]
    mode = GuidedReLUMode(GuideSwitch())
    try:
        with torch.inference_mode(), mode:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return mode.guided_calls, module_calls


def compare_maps(reference: str, method: str, ours: torch.Tensor, theirs: torch.Tensor) -> Comparison:
    """Score a stack of our maps against the reference's, map by map (see ``Comparison``)."""
    if ours.shape != theirs.shape:
        raise ValueError(f"{reference}: map shape {tuple(theirs.shape)} differs from ours {tuple(ours.shape)}")
    ours, theirs = ours.double(), theirs.double()
    errors, relative, degenerate = [0.0], [], 0
    for a, b in zip(ours, theirs, strict=True):
        peak = float(b.abs().max())
        difference = float((a - b).abs().max())
        relative.append(difference / peak if peak > 0 else difference)  # an all-zero reference: absolute
        if is_degenerate(b):
            degenerate += 1
        else:
            errors.append(float((minmax(a) - minmax(b)).abs().max()))
    return Comparison(reference, method, len(ours), degenerate, max(errors), max(relative))


def _ours(explainer: Explainer, method: str, images: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    results = explainer.explain(images, [Job(method, (t,)) for t in targets])
    return torch.stack([r.explanations[0].values for r in results]).cpu()


def captum_gradcam(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    cam = LayerGradCam(model, layer).attribute(images, target=list(targets), relu_attributions=True)
    return cam.detach()[:, 0]


def captum_guided(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    attribution = GuidedGradCam(model, layer).attribute(images.clone(), target=list(targets))
    return attribution.detach().abs().amax(dim=1)


class OutOfPlaceReLU(TorchFunctionMode):
    """Runs in-place ReLU calls out of place: same values, but no tensor is overwritten.

    pytorch-grad-cam keeps a reference to the target layer's output; when the model later
    applies an in-place ReLU to that very tensor (DenseNet: ``F.relu(features, inplace=True)``
    right after ``features``), the stored activation silently becomes ReLU(activation)
    while the gradient stays that of the layer's output, a mix that is neither.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.relu and (kwargs.pop("inplace", False) or (len(args) > 1 and args[1])):
            return F.relu(args[0])
        if func in (torch.relu_, torch.Tensor.relu_, F.relu_):
            return torch.relu(args[0])
        return func(*args, **kwargs)


def pytorch_grad_cam_raw(
    model: nn.Module,
    layer_name: str,
    images: torch.Tensor,
    targets: Sequence[int],
    out_of_place: bool = True,
    cam_class: str = "GradCAM",
    relu: bool = True,
) -> torch.Tensor:
    """A pytorch-grad-cam method (``cam_class``, GradCAM by default) at the layer's resolution.

    Its cam as ``get_cam_image`` returns it, not resized or scaled; ``relu`` applies the ReLU
    pytorch-grad-cam applies next (EigenCAM's sign is arbitrary, so its comparison needs the
    signed projection). It runs on its own copy of the model with gradients enabled, because
    it needs them and fills ``.grad`` of every parameter, while the engine keeps its model
    frozen. ``out_of_place`` runs it under ``OutOfPlaceReLU``, which only matters for models
    that overwrite the target layer's output in place.
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class RawCAM(getattr(pytorch_grad_cam, cam_class)):  # type: ignore[misc]
        """The method, keeping ``get_cam_image``'s output: the cam before resizing and scaling."""

        raw: np.ndarray

        def get_cam_image(self, *args, **kwargs) -> np.ndarray:
            self.raw = super().get_cam_image(*args, **kwargs)
            return self.raw

    reference = copy.deepcopy(model).requires_grad_(True)
    cam = RawCAM(reference, [dict(reference.named_modules())[layer_name]])
    try:
        if out_of_place:
            with OutOfPlaceReLU():
                cam(images, [ClassifierOutputTarget(t) for t in targets])
        else:
            cam(images, [ClassifierOutputTarget(t) for t in targets])
    finally:
        cam.activations_and_grads.release()
    raw = torch.from_numpy(np.asarray(cam.raw, dtype=np.float32))
    return torch.relu(raw) if relu else raw


def agreement(subject: str, as_shipped: bool = False) -> Agreement:
    """Compare our gradcam (and guided_gradcam where Captum applies) with the references.

    Each at batch 1 (the first image) and on the batch of 8 with distinct targets.
    ``as_shipped`` also scores pytorch-grad-cam without ``OutOfPlaceReLU`` on the batch of 8.
    """
    model, images = build_subject(subject)
    side = int(images.shape[-1])
    explainer = Explainer(model, (side, side))
    model = explainer.model  # frozen, in eval mode
    layer, layer_name = explainer.layer, explainer.layer_name
    with torch.inference_mode():
        targets = distinct_top_targets(model(images))
    relus, module_relus = relu_calls(model, images[:1])
    guided_note = None
    if relus != module_relus:
        guided_note = f"{relus - module_relus} of {relus} ReLU calls are not nn.ReLU modules (F.relu or ReLU6)"
    references: list[tuple[str, str, Callable]] = [
        ("Captum LayerGradCam", "gradcam", lambda x, t: captum_gradcam(model, layer, x, t)),
        ("pytorch-grad-cam GradCAM", "gradcam", lambda x, t: pytorch_grad_cam_raw(model, layer_name, x, t)),
    ]
    if guided_note is None:
        references.append(("Captum GuidedGradCam", "guided_gradcam", lambda x, t: captum_guided(model, layer, x, t)))
    comparisons = []
    for batch_images, batch_targets in ((images[:1], targets[:1]), (images, targets)):
        methods = dict.fromkeys(method for _, method, _ in references)
        ours = {method: _ours(explainer, method, batch_images, batch_targets) for method in methods}
        for name, method, reference in references:
            comparisons.append(compare_maps(name, method, ours[method], reference(batch_images, batch_targets)))
    shipped = None
    if as_shipped:
        as_shipped_map = pytorch_grad_cam_raw(model, layer_name, images, targets, out_of_place=False)
        shipped = compare_maps("pytorch-grad-cam GradCAM (as shipped)", "gradcam", ours["gradcam"], as_shipped_map)
    logger.info("%s: max normalised error %.2e", subject, max(c.max_error for c in comparisons))
    map_size = (int(ours["gradcam"].shape[-2]), int(ours["gradcam"].shape[-1]))
    return Agreement(
        subject, layer_name, side, map_size, tuple(targets), tuple(comparisons), guided_note, relus, shipped
    )
