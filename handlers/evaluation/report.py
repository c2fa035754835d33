"""Render the evaluation results as the Markdown page docs/evaluation.md."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from .agreement import Agreement, Comparison
from .examples import Example
from .family import FamilyAgreement
from .localisation import DEFECTS, Localisation, MethodScore
from .report_family import family_agreement_section, family_localisation_section, family_sanity_section
from .report_vit import vit_section
from .sanity import Step
from .targets import AGREEMENT_TOLERANCE, DISCRIMINATION_TARGET, POINTING_TARGET, SANITY_LIMIT
from .transformer import ViTEvaluation

_REFERENCES = ("Captum LayerGradCam", "pytorch-grad-cam GradCAM", "Captum GuidedGradCam")
_METHOD_NAMES = {
    "gradcam": "Grad-CAM",
    "guided_gradcam": "Guided Grad-CAM",
    "guided_backprop": "Guided Backprop",
}
_DETAILED = tuple(_METHOD_NAMES)  # the methods of the detailed randomisation table
_VERSIONS_OF = ("torch", "torchvision", "captum", "grad-cam", "scipy")


@dataclass(frozen=True)
class Setup:
    """What the numbers were measured on: held-out data (seed, counts) and weights.

    No date or run time: the page must be byte-identical when rerun on unchanged code.
    """

    evaluation_seed: int
    counts: dict[str, int]
    sanity_images: int
    weights_sha256: str
    layer: str  # the default model's Grad-CAM layer
    grid: str  # its map grid, e.g. "16x16"


def machine() -> str:
    """One line naming the machine and the library versions the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in _VERSIONS_OF)
    system = f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores"
    return f"{system}; Python {platform.python_version()}, {versions}"


def _percent(hits: int, total: int) -> str:
    return f"{100 * hits / total:.1f}% ({hits}/{total})" if total else "n/a"


def _verdict(met: bool) -> str:
    return "met" if met else "**NOT met**"


def _error(comparison: Comparison | None) -> str:
    if comparison is None:
        return "n/a"
    text = f"{comparison.max_error:.1e}"
    return text + (f" ({comparison.degenerate} const.)" if comparison.degenerate else "")


def agreement_section(results: Sequence[Agreement]) -> list[str]:
    """Table of the largest normalised error per model, reference and batch size, then notes."""
    lines = [
        "## 1. Agreement with independent implementations",
        "",
        "Our maps against Captum's `LayerGradCam` / `GuidedGradCam` and pytorch-grad-cam's `GradCAM` on the same",
        "layer and targets, at the reference's own resolution (no resizing): the largest |difference| after min-max",
        "normalising each map, over one image (batch 1) and over a batch of 8 with a different target per image",
        "(each image's best-scoring class not taken by an earlier one). torchvision models have seeded random",
        "weights on seeded N(0, 1) inputs; the default model has its committed weights on held-out images.",
        "pytorch-grad-cam's cam is taken before its resize and min-max scaling (`get_cam_image`, then its ReLU).",
        f"Target: <= {AGREEMENT_TOLERANCE:.0e}. A map whose range is below 1e-3 of its peak counts as constant",
        '("const.") and is compared by raw relative error instead; none occurred where the column shows no count.',
        "The last column is the largest |ours - reference| / max |reference| over every map of the row,",
        "constant ones included.",
        "",
        "| model | layer | input | map | Captum LayerGradCam b1 / b8 | pytorch-grad-cam b1 / b8 "
        "| Captum GuidedGradCam b1 / b8 | max raw rel. error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for result in results:
        cells = []
        for reference in _REFERENCES:
            found = {c.batch: c for c in result.comparisons if c.reference == reference}
            cells.append(f"{_error(found.get(1))} / {_error(found.get(8))}" if found else "not comparable¹")
        relative = max(c.max_relative_error for c in result.comparisons)
        size = "x".join(map(str, result.map_size))
        row = [result.subject, f"`{result.layer}`", str(result.side), size, *cells, f"{relative:.1e}"]
        lines.append("| " + " | ".join(row) + " |")
        if result.as_shipped is not None and result.as_shipped.max_error > AGREEMENT_TOLERANCE:
            notes.append((result, result.as_shipped))
    worst = max(r.max_error for r in results)
    lines += [
        "",
        f"Largest normalised error over all models, references and batches: **{worst:.1e}** (target "
        f"<= {AGREEMENT_TOLERANCE:.0e}: {_verdict(worst <= AGREEMENT_TOLERANCE)}). An error of 0.0e+00",
        "means bit-identical maps: the same floating-point operations in the same order.",
        "",
    ]
    skipped = [r for r in results if r.guided_note]
    if skipped:
        lines += [
            "¹ Not comparable: Captum's guided backprop hooks only `nn.ReLU` modules and passes the plain gradient",
            "through any other ReLU call, while the engine guides every ReLU call, so the two methods differ by",
            "design on " + "; ".join(f"{r.subject} ({r.guided_note})" for r in skipped) + ".",
        ]
    no_relu = [r.subject for r in results if r.relu_calls == 0]
    if no_relu:
        lines += [
            f"{', '.join(no_relu)}: no ReLU call at all. Guided backprop is defined for ReLU only, so both",
            "implementations give gradient x Grad-CAM there, and that is all the Guided Grad-CAM column checks.",
        ]
    for result, shipped in notes:
        fixed = [c for c in result.comparisons if c.reference == "pytorch-grad-cam GradCAM"]
        after = max((c.max_error for c in fixed), default=float("nan"))
        lines += [
            "",
            f"pytorch-grad-cam **as shipped** differs on {result.subject} (largest normalised error "
            f"{shipped.max_error:.2f}).",
            "The column above runs it with in-place ReLUs made out of place (`agreement.OutOfPlaceReLU`: same values,",
            f"same logits), which gives {after:.1e}.",
            "pytorch-grad-cam keeps a reference to the layer's output; an in-place ReLU after the layer overwrites",
            "it, so its activations become ReLU(A) while its gradients stay those of A.",
        ]
    return [*lines, ""]


def _quartiles(values: Sequence[float]) -> str:
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return f"{np.mean(values):.3f} | {q1:.3f} / {q2:.3f} / {q3:.3f}"


def localisation_section(outcome: Localisation, setup: Setup) -> list[str]:
    """Pointing game, energy in mask and class discrimination, with counts."""
    defects, mixed = outcome.defects, outcome.mixed
    correct = sum(d.predicted == d.kind for d in defects)
    counts = ", ".join(f"{n} {kind}" for kind, n in setup.counts.items())
    lines = [
        "## 2. Localisation on ground truth (default model `inspection`)",
        "",
        f"Held-out set: {counts} images generated with seed {setup.evaluation_seed} (training used the seeds in",
        "`handlers/inspection/inspection.json`, never this one). Region of a defect: its pixel mask downsampled",
        "to the 16x16 Grad-CAM grid (a cell counts when any of its pixels is in the mask), dilated by one cell;",
        "Guided Grad-CAM (input resolution) is scored on the same region at pixel resolution.",
        f"The model classifies {_percent(correct, len(defects))} of the single-defect images correctly.",
        "",
        "### Pointing game (single-defect images; map of the predicted defect class)",
        "",
        "| images | Grad-CAM maximum in region | Guided Grad-CAM maximum in region |",
        "|---|---|---|",
    ]
    groups = [(kind, [d for d in defects if d.kind == kind]) for kind in DEFECTS]
    groups += [("correctly classified", [d for d in defects if d.predicted == d.kind]), ("all", list(defects))]
    for name, group in groups:
        lines.append(
            f"| {name} | {_percent(sum(d.gradcam_hit for d in group), len(group))} | "
            f"{_percent(sum(d.guided_hit for d in group), len(group))} |"
        )
    lines += [
        "",
        f"Target: Grad-CAM >= {POINTING_TARGET:.0%} of all defect images: "
        f"{_verdict(outcome.pointing_rate >= POINTING_TARGET)}.",
        "",
        "### Energy in mask (share of the map's mass inside the region)",
        "",
        "| images | method | mean | quartiles (25% / median / 75%) |",
        "|---|---|---|---|",
    ]
    for name, group in groups[:2] + groups[3:]:
        lines.append(f"| {name} | Grad-CAM | {_quartiles([d.gradcam_energy for d in group])} |")
        lines.append(f"| {name} | Guided Grad-CAM | {_quartiles([d.guided_energy for d in group])} |")
        lines.append(f"| {name} | uniform map (region area) | {_quartiles([d.region_share for d in group])} |")
    both = sum(m.discriminative for m in mixed)
    lines += [
        "",
        "### Class discrimination (images with both a scratch and a dent)",
        "",
        "The Grad-CAM map of class `scratch` and that of class `dent`, on the same image. A map succeeds when its",
        "maximum lies in its own defect's region and not in a cell of the other defect.",
        "",
        "| map | maximum in own region | maximum on the other defect |",
        "|---|---|---|",
    ]
    for defect in DEFECTS:
        lines.append(
            f"| {defect} | {_percent(sum(m.hits[defect] for m in mixed), len(mixed))} | "
            f"{_percent(sum(m.confused[defect] for m in mixed), len(mixed))} |"
        )
    met = bool(mixed) and outcome.discriminative_rate >= DISCRIMINATION_TARGET
    lines += [
        "",
        f"Both maps right: **{_percent(both, len(mixed))}** (target >= {DISCRIMINATION_TARGET:.0%}: {_verdict(met)}).",
        "",
    ]
    return lines


def sanity_section(steps: Sequence[Step], setup: Setup) -> list[str]:
    """Median Spearman rho per cascade step and method, with constant-map counts, then a reading."""
    lines = [
        "## 3. Sanity check: cascading model-parameter randomisation (Adebayo et al., 2018)",
        "",
        f"{setup.sanity_images} held-out defect images, each explained for the class the trained model predicts.",
        "Layers are re-initialised top-down with PyTorch's own initialisation (`reset_parameters`, seeded), one",
        "more per row (a BatchNorm goes with its convolution); each map is compared with the trained model's map by",
        "Spearman rank correlation (`scipy.stats.spearmanr`). A randomised map that is constant has no ranking and",
        "is counted apart, not in the median.",
        f"An explanation of the model must decorrelate (rho below {SANITY_LIMIT}).",
        "Guided Backprop, the fine-detail factor of Guided Grad-CAM, is shown beside them (the engine's, equal to",
        "Captum's `GuidedBackprop` on this model: section 1b).",
        "",
        "| randomised down to | "
        + " | ".join(f"{_METHOD_NAMES[m]} median rho (IQR) | const." for m in _DETAILED)
        + " |",
        "|---|" + "---|---|" * len(_DETAILED),
    ]
    for step in steps:
        cells = []
        for method in _DETAILED:
            values = step.rho[method][~np.isnan(step.rho[method])]
            spread = "" if not len(values) else " ({:.2f} to {:.2f})".format(*np.percentile(values, [25, 75]))
            cells += [f"{step.median(method):.3f}{spread}", str(step.constant[method])]
        lines.append(f"| `{step.layer}` | " + " | ".join(cells) + " |")
    lines += ["", *_sanity_reading(steps), ""]
    return lines + family_sanity_section(steps)


def _sanity_reading(steps: Sequence[Step]) -> list[str]:
    """What the randomisation table shows, each sentence chosen by the numbers it states."""
    medians = {m: [step.median(m) for step in steps] for m in _DETAILED}
    worst = int(np.argmax(medians["gradcam"]))
    peak = medians["gradcam"][worst]
    above = [step.layer for step, rho in zip(steps, medians["gradcam"], strict=True) if rho >= SANITY_LIMIT]
    lines = [
        f"Grad-CAM: the largest median rho is {peak:.2f} (randomised down to `{steps[worst].layer}`): "
        + (
            f"below {SANITY_LIMIT} at every step."
            if not above
            else f"{SANITY_LIMIT} or more when randomised down to " + ", ".join(f"`{a}`" for a in above) + "."
        )
    ]
    if worst > 0:
        lines.append(
            f"The correlation does not fall step by step: it is highest with the layers down to `{steps[worst].layer}` "
            "random, not with the classifier alone."
        )
    gap = max(abs(a - b) for a, b in zip(medians["gradcam"], medians["guided_gradcam"], strict=True))
    lines.append(
        f"Guided Grad-CAM's median rho stays within {gap:.2f} of Grad-CAM's at every step: over the whole map, its "
        "ranks follow the coarse Grad-CAM factor it is multiplied by."
    )
    backprop = medians["guided_backprop"]
    kept = next((i for i, rho in enumerate(backprop) if rho < SANITY_LIMIT), len(steps))
    if kept:
        lines.append(
            f"Its fine detail is Guided Backprop's, which alone keeps a median rho of {backprop[0]:.2f} with only the "
            f"classifier random and stays at {SANITY_LIMIT} or more for the first {kept} of {len(steps)} steps: it "
            "barely depends on the top layers (as Adebayo et al. found, it largely reconstructs image edges), so "
            "read a Guided Grad-CAM picture for where (its Grad-CAM factor) more than for the exact pixels."
        )
    else:
        lines.append(
            f"Guided Backprop alone, its fine-detail factor, falls to a median rho of {backprop[0]:.2f} with only the "
            f"classifier random: below {SANITY_LIMIT} from the first step."
        )
    return lines


def examples_section(written: Sequence[tuple[Path, Example]], relative_to: Path) -> list[str]:
    """The example pictures with their captions."""
    lines = [
        "## 4. Examples (default model, held-out images)",
        "",
        "Each picture: the image with the true defect outlines in green | Grad-CAM overlay | Guided Grad-CAM (jet),",
        "both maps divided by their maximum, as the server renders them.",
        "",
    ]
    for path, example in written:
        link = Path(os.path.relpath(path, relative_to)).as_posix()
        lines += [f"**{example.caption}**", "", f"![{example.slug}]({link})", ""]
    return lines


def summary(
    agreements: Sequence[Agreement],
    family: Sequence[FamilyAgreement],
    outcome: Localisation,
    scores: Sequence[MethodScore],
    steps: Sequence[Step],
) -> list[str]:
    """The page's opening in plain words, for a reader who knows neither the pointing game nor Spearman's rho."""
    worst = max(max(r.max_error for r in agreements), max(r.max_error for r in family))
    methods = sorted({c.method for r in family for c in r.comparisons})
    pointing, mixed = outcome.pointing_rate, outcome.discriminative_rate if outcome.mixed else float("nan")
    peak = max(step.median("gradcam") for step in steps)
    edges = steps[0].median("guided_backprop")
    lines = [
        "## In short",
        "",
        "We checked that the heatmaps are computed right, that they show where the defect is, and that they "
        "depend on what the model learned.",
        f"- **Same maps as other libraries**: on {len(agreements)} models our Grad-CAM and Guided Grad-CAM maps, "
        f"and on {len(family)} of them all {len(methods)} methods, equal those of Captum and pytorch-grad-cam to "
        f"within {worst:.1e} on a 0-1 scale (required: {AGREEMENT_TOLERANCE:.0e}; "
        f"{_verdict(worst <= AGREEMENT_TOLERANCE)}).",
        f"- **Pointing at the defect**: on {len(outcome.defects)} generated images whose defect pixels are known, "
        f"the hottest cell of the Grad-CAM map lies on the defect in {pointing:.1%} (required: "
        f"{POINTING_TARGET:.0%}; {_verdict(pointing >= POINTING_TARGET)}).",
        f"- **One map per class**: on {len(outcome.mixed)} images with both a scratch and a dent, the map asked "
        f"for `scratch` is hottest on the scratch and the one for `dent` on the dent in {mixed:.1%} (required: "
        f"{DISCRIMINATION_TARGET:.0%}; {_verdict(mixed >= DISCRIMINATION_TARGET)}).",
        "- **Depends on the model**: replacing the trained weights by random ones, layer by layer from the top, "
        f"leaves maps that rank pixels unlike the trained model's (rank correlation at most {peak:.2f}, where 1 "
        f"means the same order and 0 none; required: below {SANITY_LIMIT}; {_verdict(peak < SANITY_LIMIT)}).",
    ]
    lines += _family_summary(scores, steps)
    if edges >= SANITY_LIMIT:
        lines.append(
            f"- Guided Grad-CAM's pixel detail barely depends on the model (correlation {edges:.2f} with the "
            "classifier random): trust it for where, not for exact pixels."
        )
    return [*lines, ""]


def _family_summary(scores: Sequence[MethodScore], steps: Sequence[Step]) -> list[str]:
    """Two plain bullets on the other methods: where they point, and whether they depend on the model."""
    reach = [s for s in scores if s.pointing_rate >= POINTING_TARGET]
    miss = [s for s in scores if s.pointing_rate < POINTING_TARGET]
    lines = [
        f"- **The other methods**: the hottest point is on the defect for {len(reach)} of {len(scores)} "
        "class-specific methods at the 95% bar ("
        + ", ".join(f"`{s.method}` {s.pointing_rate:.0%}" for s in reach)
        + ")"
        + ("; below it: " + ", ".join(f"`{s.method}` {s.pointing_rate:.0%}" for s in miss) if miss else "")
        + " (section 2)."
    ]
    stuck = [m for m in steps[0].rho if max(step.median(m) for step in steps) >= SANITY_LIMIT]
    if stuck:
        lines.append(
            "- Maps that stay like the trained model's at some randomisation step (rank correlation "
            f"{SANITY_LIMIT} or more): " + ", ".join(f"`{m}`" for m in stuck) + " (section 3 says why)."
        )
    return lines


def render_report(
    agreements: Sequence[Agreement],
    family: Sequence[FamilyAgreement],
    outcome: Localisation,
    scores: Sequence[MethodScore],
    steps: Sequence[Step],
    written: Sequence[tuple[Path, Example]],
    setup: Setup,
    out: Path,
    vit: ViTEvaluation,
) -> str:
    """The whole page; image links are relative to ``out``'s folder.

    No date or run time in it: rerun on unchanged code and machine, it is byte-identical.
    """
    header = [
        "# Are the explanations right? Evaluation report",
        "",
        *summary(agreements, family, outcome, scores, steps),
        "## How this was measured",
        "",
        "Generated by `python -m handlers.evaluation` (`make eval`).",
        f"Machine: {machine()}.",
        f"Default model weights: `handlers/inspection/inspection.pth`, sha256 `{setup.weights_sha256}`.",
        "All inputs, weights and targets are seeded and torch runs on one thread: a rerun on the same machine",
        "and library versions rewrites this page and its pictures byte for byte.",
        "The thresholds are asserted by tests/test_reference_agreement.py, tests/test_method_agreement.py,",
        "tests/test_localisation.py, tests/test_sanity_checks.py and tests/test_faithfulness_evaluation.py on",
        "smaller sets.",
        "",
    ]
    body = [
        *agreement_section(agreements),
        *family_agreement_section(family),
        *localisation_section(outcome, setup),
        *family_localisation_section(scores),
        *sanity_section(steps, setup),
    ]
    vit_lines = vit_section(vit, outcome, setup.layer, setup.grid)
    return "\n".join(header + body + examples_section(written, out.parent) + vit_lines)
