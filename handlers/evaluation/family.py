"""Every method of the registry against an independent implementation of the same method.

The methods come from the engine's registry (``METHODS``); each one that draws maps needs an
entry in ``REFERENCES`` (a method without one fails ``family_agreement`` and its test):

- the gradient-CAM variants and EigenCAM: pytorch-grad-cam's classes, raw cam taken before
  its resize and scaling (``agreement.pytorch_grad_cam_raw``, with ``OutOfPlaceReLU``);
- ``cam``: Captum's ``LayerGradCam``, where the head is pool + linear (elsewhere the engine
  must refuse it);
- ``guided_gradcam`` / ``guided_backprop``: Captum's ``GuidedGradCam`` / ``GuidedBackprop``,
  channels as max |value|, where Captum's hooks cover every ReLU call;
- ``activations``: Captum's ``LayerActivation`` on the same layer, the channels ours chose;
- ``occlusion`` / ``integrated_gradients``: a direct Captum call with the same window, stride,
  baseline and steps, reduced as ours (sum over colour channels, then |.|). The engine calls
  Captum itself here, so this checks its targets, rows and reduction, not Captum's algorithm.

EigenCAM's principal component has an arbitrary sign: the engine orients it to correlate
positively with the mean activation, pytorch-grad-cam does not, so each map is compared with
the better of ReLU(+projection) and ReLU(-projection) and the flips are counted.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from captum.attr import GuidedBackprop, IntegratedGradients, LayerActivation, Occlusion

from ..engine import Explainer, Job
from ..engine.methods import METHODS, Method, MethodError, MethodParams
from .agreement import (
    SUBJECTS,
    Comparison,
    build_subject,
    captum_gradcam,
    captum_guided,
    compare_maps,
    distinct_top_targets,
    pytorch_grad_cam_raw,
    relu_calls,
)

logger = logging.getLogger(__name__)

# The costly methods run with small settings (say so in the report): occlusion windows of a
# quarter of the side, stride = window (16 perturbed forwards per target), 4 integrated-gradients steps.
WINDOW_FRACTION = 4
IG_STEPS = 4


@dataclass(frozen=True)
class Subject:
    """One model under test: its explainer (frozen model, target layer) and what Captum's guide covers."""

    name: str
    explainer: Explainer
    params: MethodParams
    guided_note: str | None  # why Captum's guided backprop differs by design, None when it does not


@dataclass(frozen=True)
class Pairs:
    """Our maps, flattened: which image (row) and which class or channel (key) each one explains."""

    rows: list[int]
    keys: list[int | None]
    maps: torch.Tensor  # M x h x w


ReferenceMaps = Callable[[Subject, torch.Tensor, Pairs], torch.Tensor]


@dataclass(frozen=True)
class Reference:
    """An independent implementation: its name, its maps for our (row, key) pairs, and when it applies.

    ``applies`` returns None when the reference is comparable on a subject, else the reason;
    ``signed``: the reference's maps carry an arbitrary sign (compared up to sign).
    """

    name: str
    maps: ReferenceMaps
    applies: Callable[[Subject], str | None] = lambda _subject: None
    signed: bool = False


def _targets(pairs: Pairs) -> list[int]:
    return [int(k) for k in pairs.keys if k is not None]


def _pgc(cam_class: str, relu: bool = True) -> ReferenceMaps:
    """pytorch-grad-cam's ``cam_class`` at the layer grid, one map per image (one target each)."""

    def maps(subject: Subject, images: torch.Tensor, pairs: Pairs) -> torch.Tensor:
        e = subject.explainer
        targets = _targets(pairs) or [0] * len(images)  # EigenCAM ignores targets
        return pytorch_grad_cam_raw(e.model, e.layer_name, images, targets, cam_class=cam_class, relu=relu)

    return maps


def _captum_layer_gradcam(subject: Subject, images: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    return captum_gradcam(subject.explainer.model, subject.explainer.layer, images, _targets(pairs))


def _captum_guided_gradcam(subject: Subject, images: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    return captum_guided(subject.explainer.model, subject.explainer.layer, images, _targets(pairs))


def _captum_guided_backprop(subject: Subject, images: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    attribution = GuidedBackprop(subject.explainer.model).attribute(images.clone(), target=_targets(pairs))
    return attribution.detach().abs().amax(dim=1)


def _captum_activations(subject: Subject, images: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    activations = LayerActivation(subject.explainer.model, subject.explainer.layer).attribute(images)
    return activations.detach()[pairs.rows, _targets(pairs)]


def _captum_occlusion(subject: Subject, images: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    window, stride = subject.params.window, subject.params.stride
    assert window is not None and stride is not None
    channels = images.shape[1]
    attribution = Occlusion(subject.explainer.model).attribute(
        images[pairs.rows],
        sliding_window_shapes=(channels, window, window),
        strides=(channels, stride, stride),
        baselines=0.0,
        target=_targets(pairs),
    )
    return attribution.detach().sum(dim=1).abs()


def _captum_integrated_gradients(subject: Subject, images: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    attribution = IntegratedGradients(subject.explainer.model).attribute(
        images[pairs.rows], baselines=0.0, target=_targets(pairs), n_steps=subject.params.steps
    )
    return attribution.detach().sum(dim=1).abs()


def _needs_linear_head(subject: Subject) -> str | None:
    if METHODS["cam"].available(subject.explainer.explained):
        return None
    return "refused: the head is not global-average-pool + linear"


def _needs_module_relus(subject: Subject) -> str | None:
    return subject.guided_note


REFERENCES: dict[str, Reference] = {
    "gradcam": Reference("pytorch-grad-cam GradCAM", _pgc("GradCAM")),
    "guided_gradcam": Reference("Captum GuidedGradCam", _captum_guided_gradcam, _needs_module_relus),
    "cam": Reference("Captum LayerGradCam", _captum_layer_gradcam, _needs_linear_head),
    "hirescam": Reference("pytorch-grad-cam HiResCAM", _pgc("HiResCAM")),
    "gradcam_plusplus": Reference("pytorch-grad-cam GradCAMPlusPlus", _pgc("GradCAMPlusPlus")),
    "xgradcam": Reference("pytorch-grad-cam XGradCAM", _pgc("XGradCAM")),
    "layercam": Reference("pytorch-grad-cam LayerCAM", _pgc("LayerCAM")),
    "eigencam": Reference("pytorch-grad-cam EigenCAM", _pgc("EigenCAM", relu=False), signed=True),
    "guided_backprop": Reference("Captum GuidedBackprop", _captum_guided_backprop, _needs_module_relus),
    "activations": Reference("Captum LayerActivation", _captum_activations),
    "occlusion": Reference("Captum Occlusion", _captum_occlusion),
    "integrated_gradients": Reference("Captum IntegratedGradients", _captum_integrated_gradients),
}


def compared_methods() -> list[str]:
    """Every registered method that draws maps, in registry order (``none`` draws none)."""
    return [name for name, method in METHODS.items() if method.explains != "nothing"]


def costly(method: Method) -> bool:
    """Whether a method runs many passes per map: one that takes a window, a stride or steps."""
    return bool({"window", "stride", "steps"} & set(method.params))


def evaluation_params(side: int) -> MethodParams:
    """The settings of the costly methods at this input side (see WINDOW_FRACTION, IG_STEPS)."""
    window = side // WINDOW_FRACTION
    return MethodParams(window=window, stride=window, steps=IG_STEPS)


@dataclass(frozen=True)
class FamilyAgreement:
    """Every method's comparisons on one model, batch 1 and batch 8.

    ``skipped[m]``: why method m has no comparison here (refused by the engine, as it must be,
    or not comparable by design); ``sign_flips``: EigenCAM maps that matched the reference's
    negated projection (its sign is arbitrary).
    """

    subject: str
    layer: str
    comparisons: tuple[Comparison, ...]
    skipped: dict[str, str]
    sign_flips: int
    maps: int  # EigenCAM maps compared, the denominator of sign_flips

    @property
    def max_error(self) -> float:
        """The largest normalised error over all comparisons (0 when every method was skipped)."""
        return max((c.max_error for c in self.comparisons), default=0.0)


def _ours(subject: Subject, method: Method, images: torch.Tensor, targets: list[int]) -> Pairs:
    jobs = [Job(method.name, (t,) if method.class_specific else (), params=subject.params) for t in targets]
    rows, keys, maps = [], [], []
    for row, result in enumerate(subject.explainer.explain(images, jobs)):
        for explanation in result.explanations:
            rows.append(row)
            keys.append(explanation.target if method.class_specific else explanation.channel)
            maps.append(explanation.values)
    return Pairs(rows, keys, torch.stack(maps).cpu())


def _orient(ours: torch.Tensor, signed: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per map, ReLU(+reference) or ReLU(-reference), whichever is closer to ours; and how many flipped."""
    plus, minus = torch.relu(signed), torch.relu(-signed)
    flip = (ours - minus).abs().amax(dim=(1, 2)) < (ours - plus).abs().amax(dim=(1, 2))
    return torch.where(flip[:, None, None], minus, plus), int(flip.sum())


def _refusal_checked(subject: Subject, method: Method) -> None:
    """A method the engine says is unavailable must be refused per request, not run."""
    try:
        subject.explainer.check(Job(method.name, params=subject.params))
    except MethodError:
        return
    raise AssertionError(f"{subject.name}: {method.name} is unavailable but not refused")


def family_agreement(name: str) -> FamilyAgreement:
    """Compare every registered method with its reference on subject ``name``, batch 1 and 8."""
    model, images = build_subject(name)
    side = int(images.shape[-1])
    explainer = Explainer(model, (side, side))
    with torch.inference_mode():
        targets = distinct_top_targets(explainer.model(images))
    relus, module_relus = relu_calls(explainer.model, images[:1])
    note = None if relus == module_relus else f"{relus - module_relus} of {relus} ReLU calls are not nn.ReLU modules"
    subject = Subject(name, explainer, evaluation_params(side), note)
    comparisons, skipped, flips, signed_maps = [], {}, 0, 0
    for method_name in compared_methods():
        method, reference = METHODS[method_name], REFERENCES[method_name]
        reason = reference.applies(subject)
        if reason is not None:
            if not method.available(explainer.explained):
                _refusal_checked(subject, method)
            skipped[method_name] = reason
            continue
        for batch in (1, len(images)):
            ours = _ours(subject, method, images[:batch], targets[:batch])
            theirs = reference.maps(subject, images[:batch], ours)
            if reference.signed:
                theirs, flipped = _orient(ours.maps, theirs)
                flips, signed_maps = flips + flipped, signed_maps + len(theirs)
            comparison = compare_maps(reference.name, method_name, ours.maps, theirs)
            comparisons.append(dataclasses.replace(comparison, batch=batch))  # images, not maps (activations: 16 each)
    result = FamilyAgreement(name, explainer.layer_name, tuple(comparisons), skipped, flips, signed_maps)
    logger.info("%s: every method, max normalised error %.2e", name, result.max_error)
    return result


# vgg16_bn is left out of the family table: pytorch-grad-cam fills .grad of its 138 M
# parameters for each of its six methods (about a minute on 2 cores); its Grad-CAM and
# Guided Grad-CAM are in the first table.
FAMILY_SUBJECTS = tuple(s for s in SUBJECTS if s != "vgg16_bn")
