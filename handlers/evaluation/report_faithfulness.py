"""Section 6 of the report: the served faithfulness score, checked; each sentence from its numbers."""

from __future__ import annotations

import itertools

import numpy as np

from ..engine.methods import METHODS
from .faithfulness import CONTROLS, CURVE_STEPS, ROAD_PERCENTILES, FaithfulnessEvaluation, ScoredMaps, auroc
from .report_family import display_name
from .targets import FAITHFULNESS_AUROC_TARGET, FAITHFULNESS_CONTROL_TARGET

HEADING = "## 6. Faithfulness: does the served score tell a faithful map from one that is not?"
_CONTROL_NAMES = {
    "shuffled": "another image's Grad-CAM map (the previous image of the set)",
    "uniform": "a uniform map (all ones)",
    "inverted": "the inverted Grad-CAM map (its maximum minus it)",
}


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def _median(values: np.ndarray) -> str:
    defined = values[~np.isnan(values)]
    return f"{np.median(defined):.3f}" if len(defined) else "n/a"


def _verdict(met: bool) -> str:
    return "**met**" if met else "**missed**"


def _split(maps: ScoredMaps) -> str:
    """Median score of the maps that point into the defect, then of those that do not."""
    return f"{_median(maps.scores[maps.hits])} | {_median(maps.scores[~maps.hits])}"


SUMMARY_LEAD = "- **A trust score per map**"


def summary_bullet(result: FaithfulnessEvaluation) -> str:
    """The section's result as one plain bullet of the page's opening summary."""
    value = auroc(result.pool().scores, result.pool().hits)
    met = min(result.beats(c) for c in CONTROLS) >= FAITHFULNESS_CONTROL_TARGET
    return (
        f"{SUMMARY_LEAD}: the served `faithfulness` score rates each image's own Grad-CAM map above another image's, "
        f"a uniform and an inverted map in {_percent(result.beats_all)} of the images (required: above each for "
        f"{FAITHFULNESS_CONTROL_TARGET:.0%}; {_verdict(met).strip('*')}) and tells maps that point at the defect "
        f"from those that do not with an AUROC of {value:.2f} (goal: {FAITHFULNESS_AUROC_TARGET:.2f}; "
        f"{_verdict(value >= FAITHFULNESS_AUROC_TARGET).strip('*')}); section 6."
    )


def faithfulness_section(result: FaithfulnessEvaluation) -> list[str]:
    """Controls, localisation AUROC, every method, the randomisation cascade, curves and agreement."""
    lines = [
        HEADING,
        "",
        "The `faithfulness` option (`handlers/engine/faithfulness.py`) scores each map by what the model says when",
        "it sees only what the map highlights: the image blended with the input's mean colour by the map (bilinear",
        "to the input, divided by its maximum), one extra forward for a whole batch. `score` is the harmonic mean",
        "of the share of the class's probability above a blank image's that the highlighted part alone keeps, and",
        "of the share of the image the map leaves out (ADCC of Poppi et al. 2021 without its coherency term).",
        f"Measured on the {result.images} single-defect images of section 2, each map at the image's predicted",
        "defect class, every score by the trained model.",
        "",
        "### Real maps against controls",
        "",
        "| map | median score | Grad-CAM scores higher |",
        "|---|---|---|",
        f"| the image's own Grad-CAM map | {_median(result.gradcam.scores)} | - |",
    ]
    for control in CONTROLS:
        lines.append(
            f"| {_CONTROL_NAMES[control]} | {_median(result.controls[control].scores)} | "
            f"{_percent(result.beats(control))} |"
        )
    met = min(result.beats(c) for c in CONTROLS) >= FAITHFULNESS_CONTROL_TARGET
    lines += [
        "",
        f"Higher than all three: **{_percent(result.beats_all)}** of the images (target: higher than each control "
        f"for >= {FAITHFULNESS_CONTROL_TARGET:.0%}: {_verdict(met)}).",
        "",
        *_localisation(result),
        *_methods(result),
        *_sanity(result),
        *_curves(result),
        *_agreement(result),
    ]
    return lines


def _localisation(result: FaithfulnessEvaluation) -> list[str]:
    pooled, natural = result.pool(), result.pool(natural_only=True)
    value, natural_value = auroc(pooled.scores, pooled.hits), auroc(natural.scores, natural.hits)
    lines = [
        "### Does the score say whether the map points at the defect?",
        "",
        "A pool of maps that point right or wrong: every class-specific method's map of each image (table below),",
        "the shuffled and inverted controls (not the uniform map: its maximum is nowhere) and the Grad-CAM maps of",
        f"the model randomised layer by layer ({result.sanity_images} images per step). A map points right when its",
        "maximum lies in the defect's region (section 2's pointing game). AUROC of the score for pointing right:",
        "",
        "| pool | maps | point right | median score: right / wrong | AUROC |",
        "|---|---|---|---|---|",
        f"| all | {len(pooled.scores)} | {_percent(pooled.hits.mean())} | {_split(pooled).replace(' | ', ' / ')} | "
        f"{value:.3f} |",
        f"| methods and randomised models only (no controls) | {len(natural.scores)} | "
        f"{_percent(natural.hits.mean())} | {_split(natural).replace(' | ', ' / ')} | {natural_value:.3f} |",
        "",
        f"Goal: AUROC >= {FAITHFULNESS_AUROC_TARGET:.2f}: on the whole pool "
        f"{_verdict(value >= FAITHFULNESS_AUROC_TARGET)}, without the constructed controls "
        f"{_verdict(natural_value >= FAITHFULNESS_AUROC_TARGET)}.",
        "",
    ]
    return lines


def _methods(result: FaithfulnessEvaluation) -> list[str]:
    shuffled = result.controls["shuffled"].scores
    lines = [
        "### Every class-specific method",
        "",
        "| method | images | maximum on the defect | median score | scores above the shuffled control |",
        "|---|---|---|---|---|",
    ]
    for name, maps in result.methods.items():
        above = float(np.mean(maps.scores > shuffled[: len(maps.scores)]))
        lines.append(
            f"| `{name}` ({display_name(name)}) | {len(maps.scores)} | {_percent(maps.hits.mean())} | "
            f"{_median(maps.scores)} | {_percent(above)} |"
        )
    lowest = min(result.methods, key=lambda m: np.nanmedian(result.methods[m].scores))
    lines += [
        "",
        f"The lowest median score is `{lowest}`'s ({_median(result.methods[lowest].scores)})"
        + (
            ", a map of single pixels: the pixels it highlights, shown alone (the image x the map), keep less of "
            "the class than a layer map's smooth region does, even where its maximum is on the defect."
            if METHODS[lowest].resolution == "input"
            else "."
        ),
        "",
    ]
    return lines


def _sanity(result: FaithfulnessEvaluation) -> list[str]:
    trained = result.gradcam.scores[: result.sanity_images]
    trained_hits = result.gradcam.hits[: result.sanity_images]
    lines = [
        "### Under model randomisation (section 3's cascade)",
        "",
        "The Grad-CAM maps of the model randomised down to each layer, at the trained model's predicted class,",
        "scored by the trained model: they no longer explain the model that predicts, so they should score lower.",
        "",
        "| randomised down to | median score | maximum on the defect | scores below the trained model's map |",
        "|---|---|---|---|",
        f"| nothing (trained) | {_median(trained)} | {_percent(trained_hits.mean())} | - |",
    ]
    for step in result.sanity:
        lines.append(
            f"| `{step.layer}` | {_median(step.maps.scores)} | {_percent(step.maps.hits.mean())} | "
            f"{_percent(step.lower)} |"
        )
    medians = [float(np.nanmedian(step.maps.scores)) for step in result.sanity]
    highest = int(np.argmax(medians))
    falls = all(a >= b for a, b in itertools.pairwise(medians))
    lines += [
        "",
        f"With only the classifier random the median score falls from {_median(trained)} to {medians[0]:.3f}; "
        f"at every step at least {_percent(min(s.lower for s in result.sanity))} of the randomised maps score below "
        "the trained model's."
        + (
            " The median keeps falling as more layers are randomised."
            if falls
            else f" It does not keep falling: it is highest ({medians[highest]:.3f}) with the layers down to "
            f"`{result.sanity[highest].layer}` random, where the random network's map still points at the defect "
            f"in {_percent(result.sanity[highest].maps.hits.mean())} of the images (random convolutions respond to "
            "a defect's edges too): the score judges the map, not the model that drew it."
        ),
        "",
    ]
    return lines


def _curves(result: FaithfulnessEvaluation) -> list[str]:
    names = {"gradcam": "the image's own Grad-CAM map", **_CONTROL_NAMES}
    lines = [
        f"### Deletion and insertion (Petsiuk et al. 2018, `faithfulness=full`, {CURVE_STEPS} steps)",
        "",
        f"The first {result.curve_images} images: the target's probability as the map's highest pixels are replaced",
        "by the mean colour (deletion: lower is better) or put onto it (insertion: higher is better).",
        "",
        "| map | mean deletion AUC | mean insertion AUC |",
        "|---|---|---|",
    ]
    for name, curve in result.curves.items():
        lines.append(f"| {names[name]} | {curve.deletion:.3f} | {curve.insertion:.3f} |")
    real = result.curves["gradcam"]
    best = all(real.deletion < c.deletion and real.insertion > c.insertion for c in result.curves.values() if c != real)
    lines += [
        "",
        "Grad-CAM's curves are "
        + ("the best on both counts." if best else "not the best on both counts: read the AUCs beside the score."),
        "",
    ]
    return lines


def _agreement(result: FaithfulnessEvaluation) -> list[str]:
    agreement, road = result.agreement, result.road
    return [
        "### Against pytorch-grad-cam's metrics",
        "",
        f"On {agreement.images} maps (Grad-CAM and shuffled), pytorch-grad-cam's `DropInConfidence` (softmax target, "
        "the same explanation image) equals our drop x the class's probability within "
        f"{agreement.drop:.1e}, `IncreaseInConfidence` disagrees on {agreement.increase_mismatches} maps, and "
        f"`Complexity` equals our coverage within {agreement.coverage:.1e}. Its remove-most/least-relevant-first "
        "perturbations with a constant imputer give our deletion and insertion points "
        "(tests/test_faithfulness.py); its ROAD imputer is a different baseline, so ROAD numbers are not ours.",
        "",
        f"ROAD itself (`ROADCombined`, percentiles {'/'.join(map(str, ROAD_PERCENTILES))}: the pixels are "
        "removed by noisy linear imputation instead of the mean colour, Rong et al. 2022) on the first "
        f"{road.images} images' Grad-CAM and shuffled maps: it ranks the image's own map above the shuffled one "
        f"in {_percent(road.road_beats_shuffled)} of the images, our score in {_percent(road.score_beats_shuffled)}, "
        f"and the two rank all {2 * road.images} maps alike with Spearman rho {road.spearman:.2f}. ROAD costs "
        f"{2 * len(ROAD_PERCENTILES)} forwards and as many "
        "sparse linear solves per map; the score one forward.",
        "",
    ]
