"""Do the default model's maps point at the defects? Scored against generated ground truth.

Every map is scored on its own grid: Grad-CAM on the target layer's (16 x 16 cells of
8 x 8 pixels), Guided Grad-CAM on the input's pixels. The reference region is the same
for both: the defect mask downsampled to the Grad-CAM grid (a cell counts when any of
its pixels is in the mask) and dilated by one cell, the tolerance of one map cell.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..engine import Explainer, Job
from ..engine.methods import METHODS, MethodParams
from ..inspection import CLASSES, INPUT_SIZE
from ..inspection.synthetic import Sample, to_tensor
from .family import costly
from .maps import energy_share, mask_to_grid, points_into, to_resolution, tolerance_region

logger = logging.getLogger(__name__)

DEFECTS = ("scratch", "dent")
_DEFECT_TARGETS = tuple(CLASSES.index(d) for d in DEFECTS)
_CHUNK = 50  # images per engine call, to bound memory
# Occlusion in the family table: the served window (an eighth of the side, 16 px) with
# stride = window, a quarter of the served default's forwards; integrated gradients keep
# the served 16 steps.
COSTLY_PARAMS = MethodParams(window=INPUT_SIZE // 8, stride=INPUT_SIZE // 8)


@dataclass(frozen=True)
class DefectResult:
    """One single-defect image: prediction, the explained defect class and the scores of its maps.

    The explained class is the predicted defect class: the defect class with the higher
    probability (the top prediction itself unless the model says "ok").
    """

    index: int
    kind: str
    predicted: str
    explained: str
    gradcam_hit: bool
    guided_hit: bool
    gradcam_energy: float
    guided_energy: float
    region_share: float  # area of the region / image: what a uniform map would score


@dataclass(frozen=True)
class MixedResult:
    """One "scratch+dent" image: where each defect class's Grad-CAM map points.

    ``hits[d]``: the map of class d points into d's region; ``confused[d]``: it points into
    the other defect's own cells instead.
    """

    index: int
    hits: dict[str, bool]
    confused: dict[str, bool]

    @property
    def discriminative(self) -> bool:
        """Each defect class's map points into its own defect and not into the other one."""
        return all(self.hits[d] and not self.confused[d] for d in DEFECTS)


@dataclass(frozen=True)
class Localisation:
    """Per-image results on a held-out set; the headline rates are properties."""

    defects: tuple[DefectResult, ...]
    mixed: tuple[MixedResult, ...]

    @property
    def pointing_rate(self) -> float:
        """Share of single-defect images whose Grad-CAM maximum lies in the defect's region."""
        return float(np.mean([d.gradcam_hit for d in self.defects]))

    @property
    def discriminative_rate(self) -> float:
        """Share of "scratch+dent" images where both class maps point into their own defect."""
        return float(np.mean([m.discriminative for m in self.mixed]))


def _explain(explainer: Explainer, images: torch.Tensor, jobs: Sequence[Job]):
    results = []
    for start in range(0, len(images), _CHUNK):
        results += explainer.explain(images[start : start + _CHUNK], jobs[start : start + _CHUNK])
    return results


def _maps_by_class(result) -> dict[str, torch.Tensor]:
    return {CLASSES[e.target]: e.values for e in result.explanations}


def score_defects(explainer: Explainer, samples: Sequence[Sample], indices: Sequence[int]) -> list[DefectResult]:
    """Pointing game and energy in mask, Grad-CAM vs Guided Grad-CAM, for single-defect samples."""
    images = to_tensor([s.image for s in samples])
    cams = _explain(explainer, images, [Job("gradcam", _DEFECT_TARGETS)] * len(samples))
    explained = [CLASSES[_DEFECT_TARGETS[int(r.probabilities[list(_DEFECT_TARGETS)].argmax())]] for r in cams]
    guided = _explain(explainer, images, [Job("guided_gradcam", (CLASSES.index(c),)) for c in explained])
    results = []
    for index, sample, cam, target, guide in zip(indices, samples, cams, explained, guided, strict=True):
        gradcam_map = _maps_by_class(cam)[target]
        guided_map = guide.explanations[0].values
        region = tolerance_region(sample.masks[sample.kind], tuple(gradcam_map.shape))
        pixels = to_resolution(region, tuple(guided_map.shape))
        results.append(
            DefectResult(
                index=index,
                kind=sample.kind,
                predicted=CLASSES[int(cam.probabilities.argmax())],
                explained=target,
                gradcam_hit=points_into(gradcam_map, region),
                guided_hit=points_into(guided_map, pixels),
                gradcam_energy=energy_share(gradcam_map, region),
                guided_energy=energy_share(guided_map, pixels),
                region_share=float(region.float().mean()),
            )
        )
    return results


def score_mixed(explainer: Explainer, samples: Sequence[Sample], indices: Sequence[int]) -> list[MixedResult]:
    """Class discrimination on "scratch+dent" samples: each class map against each defect."""
    images = to_tensor([s.image for s in samples])
    cams = _explain(explainer, images, [Job("gradcam", _DEFECT_TARGETS)] * len(samples))
    results = []
    for index, sample, cam in zip(indices, samples, cams, strict=True):
        maps = _maps_by_class(cam)
        hits, confused = {}, {}
        for defect, other in zip(DEFECTS, reversed(DEFECTS), strict=True):
            grid = tuple(maps[defect].shape)
            hits[defect] = points_into(maps[defect], tolerance_region(sample.masks[defect], grid))
            confused[defect] = points_into(maps[defect], mask_to_grid(sample.masks[other], grid))
        results.append(MixedResult(index, hits, confused))
    return results


def localisation(model: torch.nn.Module, samples: Sequence[Sample]) -> Localisation:
    """Score the model's maps on ``samples`` ("ok" images carry no defect and are skipped)."""
    explainer = Explainer(model, (INPUT_SIZE, INPUT_SIZE))
    single = [i for i, s in enumerate(samples) if s.kind in DEFECTS]
    mixed = [i for i, s in enumerate(samples) if s.kind == "scratch+dent"]
    outcome = Localisation(
        tuple(score_defects(explainer, [samples[i] for i in single], single)),
        tuple(score_mixed(explainer, [samples[i] for i in mixed], mixed)),
    )
    logger.info(
        "pointing game %.1f%% of %d, class-discriminative %.1f%% of %d",
        100 * outcome.pointing_rate,
        len(outcome.defects),
        100 * outcome.discriminative_rate,
        len(outcome.mixed),
    )
    return outcome


@dataclass(frozen=True)
class MethodScore:
    """One class-specific method on single-defect images, explained at their predicted defect class.

    Per image (in ``Localisation.defects`` order, the first ``len(hits)`` of them): whether
    the map's maximum lies in the defect's region, and the share of its mass there.
    """

    method: str
    params: MethodParams
    hits: tuple[bool, ...]
    energy: tuple[float, ...]
    region_share: tuple[float, ...]  # what a uniform map would score, per image

    @property
    def pointing_rate(self) -> float:
        return float(np.mean(self.hits))

    @property
    def mean_energy(self) -> float:
        return float(np.mean(self.energy))


def score_method(
    explainer: Explainer, samples: Sequence[Sample], explained: Sequence[str], method: str, params: MethodParams
) -> MethodScore:
    """Pointing game and energy in mask of ``method`` for ``samples``, each at its ``explained`` class
    (class-agnostic methods draw one map per image, scored the same way).

    The region is the tolerance region on the target layer's grid, taken to the map's own
    resolution (so input-resolution maps are scored on the same region, pixel by pixel).
    """
    images = to_tensor([s.image for s in samples])
    class_specific = METHODS[method].class_specific  # a class-agnostic map (EigenCAM) is the same for any class
    jobs = [Job(method, (CLASSES.index(c),) if class_specific else (), params=params) for c in explained]
    grid = tuple(explainer.explained.layers[explainer.layer_name].shape[2:])
    hits, energy, share = [], [], []
    for sample, result in zip(samples, _explain(explainer, images, jobs), strict=True):
        values = result.explanations[0].values
        region = tolerance_region(sample.masks[sample.kind], grid)
        share.append(float(region.float().mean()))
        if tuple(values.shape) != grid:
            region = to_resolution(region, tuple(values.shape))
        hits.append(points_into(values, region))
        energy.append(energy_share(values, region))
    return MethodScore(method, params, tuple(hits), tuple(energy), tuple(share))


def family_localisation(
    model: torch.nn.Module, samples: Sequence[Sample], outcome: Localisation, costly_images: int
) -> list[MethodScore]:
    """Every class-specific method of the registry on the single-defect images of ``outcome``.

    Same images and classes as the Grad-CAM table; methods that run many passes per map
    (``family.costly``) are scored on the first ``costly_images`` of them only, with
    ``COSTLY_PARAMS`` (see there).
    """
    explainer = Explainer(model, (INPUT_SIZE, INPUT_SIZE))
    single = [samples[d.index] for d in outcome.defects]
    explained = [d.explained for d in outcome.defects]
    scores = []
    for name, method in METHODS.items():
        if not method.class_specific or not method.available(explainer.explained):
            continue
        n = costly_images if costly(method) else len(single)
        scores.append(score_method(explainer, single[:n], explained[:n], name, COSTLY_PARAMS))
        logger.info("%s: pointing game %.1f%% of %d", name, 100 * scores[-1].pointing_rate, n)
    return scores
