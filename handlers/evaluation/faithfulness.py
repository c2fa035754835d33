"""Does the faithfulness score mean something? Checked on the default model's held-out defect images.

Every map is explained at the image's predicted defect class (as in the localisation
section) and scored by the trained model with ``handlers/engine/faithfulness.py``:

- controls: the same image's Grad-CAM map against the map of another image (the previous
  one in the held-out order: another defect, elsewhere), a uniform map and the inverted map
  (its maximum minus it); the score should rank the real map first;
- localisation: whether a map's maximum lies in the defect's region (the pointing game's
  region) is predicted by its score, measured by AUROC over a pool of maps that point
  right or wrong: every class-specific method's maps, the controls, and the Grad-CAM maps of
  the model randomised layer by layer (Adebayo et al.'s cascade);
- sanity: those randomised models' maps, scored by the trained model, should score lower
  as more layers are randomised: they no longer explain the model that predicts;
- the deletion and insertion AUCs of the same maps, and agreement with pytorch-grad-cam's
  metrics where the definitions coincide.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam.metrics.arcc import Complexity
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from scipy.stats import rankdata, spearmanr

from ..engine import Explainer, Job
from ..engine.faithfulness import Faithfulness, MapToScore, explanation_masks, measure
from ..engine.methods import METHODS
from ..inspection import CLASSES, INPUT_SIZE
from ..inspection.synthetic import Sample, to_tensor
from .family import costly
from .localisation import COSTLY_PARAMS, DEFECTS
from .maps import points_into, to_resolution, tolerance_region
from .sanity import first_maps, randomised_cascade

logger = logging.getLogger(__name__)

CONTROLS = ("shuffled", "uniform", "inverted")
_DEFECT_TARGETS = [CLASSES.index(d) for d in DEFECTS]
_CHUNK = 100  # images per engine call
CURVE_STEPS = 8
ROAD_PERCENTILES = [20, 40, 60, 80]  # pytorch-grad-cam's ARCC uses these
ROAD_SEED = 0  # its imputer adds torch.randn noise: seeded, so the report is reproducible


@dataclass(frozen=True)
class ScoredMaps:
    """Scores (NaN where undefined) and pointing-game hits of one kind of map, one per image."""

    scores: np.ndarray
    hits: np.ndarray


@dataclass(frozen=True)
class SanityStep:
    """Grad-CAM maps of the model randomised down to ``layer``, scored by the trained model."""

    layer: str
    maps: ScoredMaps
    lower: float  # share of images whose randomised map scores below the trained model's map


@dataclass(frozen=True)
class Curves:
    """Mean deletion and insertion AUC of one kind of map (lower / higher is better)."""

    deletion: float
    insertion: float


@dataclass(frozen=True)
class Agreement:
    """Largest differences from pytorch-grad-cam's metrics on the same maps and images."""

    images: int
    drop: float  # |our drop x Y - DropInConfidence|
    increase_mismatches: int  # images where IncreaseInConfidence disagrees
    coverage: float  # |our coverage - Complexity|


@dataclass(frozen=True)
class RoadComparison:
    """pytorch-grad-cam's ROAD (noisy linear imputation, Rong et al. 2022) next to our score, same maps."""

    images: int
    road_beats_shuffled: float  # share of images whose own Grad-CAM map ROAD ranks above the shuffled one
    score_beats_shuffled: float  # the same for our score
    spearman: float  # rank correlation of ROAD and our score over the real and shuffled maps


@dataclass(frozen=True)
class FaithfulnessEvaluation:
    """Section 6 of the report: every number it states."""

    images: int
    gradcam: ScoredMaps
    controls: dict[str, ScoredMaps]
    methods: dict[str, ScoredMaps]  # every class-specific method (the costly ones on a prefix)
    sanity: list[SanityStep]
    sanity_images: int
    curves: dict[str, Curves]  # "gradcam" and the controls, on the first ``curve_images``
    curve_images: int
    agreement: Agreement
    road: RoadComparison

    def beats(self, control: str) -> float:
        """Share of images whose Grad-CAM map scores strictly higher than ``control`` (undefined: not)."""
        return float(np.mean(self.gradcam.scores > self.controls[control].scores))

    @property
    def beats_all(self) -> float:
        """Share of images whose Grad-CAM map scores higher than all three controls."""
        stacked = np.stack([self.controls[c].scores for c in CONTROLS])
        return float(np.mean(np.all(self.gradcam.scores > stacked, axis=0)))

    def pool(self, natural_only: bool = False) -> ScoredMaps:
        """The maps of the AUROC: every method's and the randomised models' (and the controls
        but the uniform map, whose maximum is nowhere, unless ``natural_only``)."""
        parts = [*self.methods.values(), *(step.maps for step in self.sanity)]
        if not natural_only:
            parts += [self.controls["shuffled"], self.controls["inverted"]]
        return ScoredMaps(np.concatenate([p.scores for p in parts]), np.concatenate([p.hits for p in parts]))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (ties count half); NaN scores left out."""
    defined = ~np.isnan(scores)
    scores, positive = scores[defined], positive[defined].astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _scores(measured: Sequence[Faithfulness]) -> np.ndarray:
    return np.array([np.nan if f.score is None else f.score for f in measured])


def _measure(
    model: torch.nn.Module,
    images: torch.Tensor,
    maps: Sequence[torch.Tensor],
    targets: Sequence[int],
    confidences: Sequence[float],
    steps: int = 0,
) -> list[Faithfulness]:
    """The faithfulness of ``maps[i]`` (of image i, class targets[i]) to ``model``, a chunk at a time."""
    measured: list[Faithfulness] = []
    for start in range(0, len(maps), _CHUNK):
        stop = min(start + _CHUNK, len(maps))
        items = [MapToScore(i - start, targets[i], maps[i], confidences[i], steps) for i in range(start, stop)]
        measured += measure(model, images[start:stop], items)
    return measured


def _hits(maps: Sequence[torch.Tensor], regions: Sequence[torch.Tensor]) -> np.ndarray:
    """Pointing game: each map's maximum in its image's region (taken to the map's resolution)."""
    hits = []
    for values, region in zip(maps, regions, strict=True):
        if tuple(values.shape) != tuple(region.shape):
            region = to_resolution(region, tuple(values.shape))
        hits.append(points_into(values, region))
    return np.array(hits)


def _agreement(
    model: torch.nn.Module,
    images: torch.Tensor,
    maps: Sequence[torch.Tensor],
    targets: Sequence[int],
    measured: Sequence[Faithfulness],
) -> Agreement:
    """pytorch-grad-cam's drop / increase in confidence and complexity on the same maps."""
    masks = explanation_masks(list(maps), (INPUT_SIZE, INPUT_SIZE)).numpy()
    reference = [ClassifierOutputSoftmaxTarget(t) for t in targets]
    with torch.inference_mode():
        y = torch.softmax(model(images), 1)[torch.arange(len(images)), list(targets)].numpy()
    drop = DropInConfidence()(images, masks, reference, model)
    increase = IncreaseInConfidence()(images, masks, reference, model)
    ours_drop = np.array([f.confidence_drop for f in measured]) * y
    ours_increase = np.array([f.confidence_increase for f in measured])
    return Agreement(
        images=len(images),
        drop=float(np.abs(ours_drop - drop).max()),
        increase_mismatches=int((ours_increase != increase.astype(bool)).sum()),
        coverage=float(np.abs(np.array([f.coverage for f in measured]) - Complexity()(masks)).max()),
    )


def _road(
    model: torch.nn.Module,
    images: torch.Tensor,
    real: Sequence[torch.Tensor],
    shuffled: Sequence[torch.Tensor],
    targets: Sequence[int],
    scores: tuple[np.ndarray, np.ndarray],
) -> RoadComparison:
    """ROADCombined (mean over percentiles of least- minus most-relevant-first removal) on both kinds of map."""
    road = ROADCombined(percentiles=ROAD_PERCENTILES)
    torch.manual_seed(ROAD_SEED)
    reference = [ClassifierOutputSoftmaxTarget(t) for t in targets]
    size = (INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():  # pytorch-grad-cam 1.5.7 calls np.float32 on tensors: NumPy 2 deprecates that
        warnings.simplefilter("ignore", DeprecationWarning)
        on_real = road(images, explanation_masks(list(real), size).numpy(), reference, model)
        on_shuffled = road(images, explanation_masks(list(shuffled), size).numpy(), reference, model)
    n = len(images)
    ours = np.concatenate([scores[0][:n], scores[1][:n]])
    theirs = np.concatenate([on_real, on_shuffled])
    defined = ~np.isnan(ours)
    return RoadComparison(
        images=n,
        road_beats_shuffled=float(np.mean(on_real > on_shuffled)),
        score_beats_shuffled=float(np.mean(scores[0][:n] > scores[1][:n])),
        spearman=float(spearmanr(ours[defined], theirs[defined]).statistic),
    )


def evaluate_faithfulness(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    sanity_images: int,
    costly_images: int,
    curve_images: int,
    agreement_images: int = 100,
    road_images: int = 20,
) -> FaithfulnessEvaluation:
    """Section 6 on the single-defect ``samples`` (others are skipped); the cascade, costly methods,
    curves, the pytorch-grad-cam agreement and ROAD (costly: a sparse solve per map and percentile) on the
    first images only."""
    samples = [s for s in samples if s.kind in DEFECTS]
    explainer = Explainer(model, (INPUT_SIZE, INPUT_SIZE))
    images = to_tensor([s.image for s in samples])
    with torch.inference_mode():
        chunks = [torch.softmax(model(images[i : i + _CHUNK]), 1) for i in range(0, len(images), _CHUNK)]
    probabilities = torch.cat(chunks)
    targets = [_DEFECT_TARGETS[int(p[_DEFECT_TARGETS].argmax())] for p in probabilities]
    confidences = [float(p[t]) for p, t in zip(probabilities, targets, strict=True)]
    grid = tuple(explainer.explained.layers[explainer.layer_name].shape[2:])
    regions = [tolerance_region(s.masks[s.kind], grid) for s in samples]

    def scored(maps: Sequence[torch.Tensor], n: int | None = None) -> ScoredMaps:
        n = len(maps) if n is None else n
        measured = _measure(model, images[:n], maps, targets[:n], confidences[:n])
        return ScoredMaps(_scores(measured), _hits(maps, regions[:n]))

    gradcam_maps = first_maps(explainer, images, [Job("gradcam", (t,)) for t in targets], _CHUNK)
    shuffled = gradcam_maps[-1:] + gradcam_maps[:-1]
    controls_maps = {
        "shuffled": shuffled,
        "uniform": [torch.ones_like(m) for m in gradcam_maps],
        "inverted": [m.max() - m for m in gradcam_maps],
    }
    controls = {name: scored(maps) for name, maps in controls_maps.items()}
    methods = {}
    for name, method in METHODS.items():
        if method.class_specific and method.available(explainer.explained):
            n = costly_images if costly(method) else len(samples)
            jobs = [Job(name, (t,), params=COSTLY_PARAMS) for t in targets[:n]]
            methods[name] = scored(first_maps(explainer, images[:n], jobs, _CHUNK))
            logger.info("faithfulness of %s: median score %.3f", name, np.nanmedian(methods[name].scores))

    sanity = []
    trained = methods["gradcam"].scores[:sanity_images]
    randomised = copy.deepcopy(model).eval()
    for layer in randomised_cascade(randomised):
        jobs = [Job("gradcam", (t,)) for t in targets[:sanity_images]]
        step = scored(first_maps(Explainer(randomised, (INPUT_SIZE, INPUT_SIZE)), images[:sanity_images], jobs, _CHUNK))
        sanity.append(SanityStep(layer.name, step, float(np.mean(step.scores < trained))))
        logger.info("faithfulness, randomised down to %s: median score %.3f", layer.name, np.nanmedian(step.scores))

    curves = {}
    for name, maps in {"gradcam": gradcam_maps, **controls_maps}.items():
        n = curve_images
        measured = _measure(model, images[:n], maps[:n], targets[:n], confidences[:n], CURVE_STEPS)
        curves[name] = Curves(
            float(np.mean([f.deletion_auc for f in measured])), float(np.mean([f.insertion_auc for f in measured]))
        )
    n = agreement_images  # the real maps (small drops) and the shuffled ones (large drops)
    both = torch.cat([images[:n], images[:n]])
    maps_both, targets_both = gradcam_maps[:n] + shuffled[:n], targets[:n] * 2
    measured = _measure(model, both, maps_both, targets_both, confidences[:n] * 2)
    agreement = _agreement(model, both, maps_both, targets_both, measured)
    n = road_images
    road = _road(
        model,
        images[:n],
        gradcam_maps[:n],
        shuffled[:n],
        targets[:n],
        (methods["gradcam"].scores, controls["shuffled"].scores),
    )
    return FaithfulnessEvaluation(
        images=len(samples),
        gradcam=methods["gradcam"],
        controls=controls,
        methods=methods,
        sanity=sanity,
        sanity_images=sanity_images,
        curves=curves,
        curve_images=curve_images,
        agreement=agreement,
        road=road,
    )
