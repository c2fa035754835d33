"""Render the evaluation results as the Markdown page docs/evaluation.md."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from .agreement import Agreement, Comparison
from .examples import Example
from .localisation import DEFECTS, Localisation
from .sanity import METHODS, Step

_REFERENCES = ("Captum LayerGradCam", "pytorch-grad-cam GradCAM", "Captum GuidedGradCam")
_METHOD_NAMES = {
    "gradcam": "Grad-CAM",
    "guided_gradcam": "Guided Grad-CAM",
    "guided_backprop": "Guided Backprop (Captum, reference)",
}
_VERSIONS_OF = ("torch", "torchvision", "captum", "grad-cam", "scipy")


@dataclass(frozen=True)
class Setup:
    """What the numbers were measured on: data, seeds, weights and run time."""

    evaluation_seed: int
    counts: dict[str, int]
    sanity_images: int
    weights_sha256: str
    seconds: float


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
        'Target: <= 1e-4. A map whose range is below 1e-3 of its peak counts as constant ("const.") and is',
        "compared by raw relative error instead; none occurred where the column shows no count. The last column",
        "is the largest |ours - reference| / max |reference| over every map of the row, constant ones included.",
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
        if result.as_shipped is not None and result.as_shipped.max_error > 1e-4:
            notes.append((result.subject, result.as_shipped))
    worst = max(r.max_error for r in results)
    lines += [
        "",
        f"Largest normalised error over all models, references and batches: **{worst:.1e}**. An error of 0.0e+00",
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
            f"{', '.join(no_relu)}: no ReLU at all (SiLU / GELU). Guided backprop is defined for ReLU only, so both",
            "implementations give gradient x Grad-CAM there, and that is all the Guided Grad-CAM column checks.",
        ]
    for subject, shipped in notes:
        lines += [
            "",
            f"pytorch-grad-cam **as shipped** differs on {subject} (largest normalised error {shipped.max_error:.2f}):",
            "it keeps a reference to the layer's output, which the model then overwrites with an in-place ReLU",
            "(DenseNet: `F.relu(features, inplace=True)` right after `features`), so its activations become ReLU(A)",
            "while its gradients stay those of A.",
            "The column above runs it with in-place ReLUs made out of place (`agreement.OutOfPlaceReLU`: same values,",
            "same logits), which removes only that aliasing.",
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
        "Target: Grad-CAM >= 95% of all defect images.",
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
    lines += ["", f"Both maps right: **{_percent(both, len(mixed))}** (target >= 90%).", ""]
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
        "is counted apart, not in the median. An explanation of the model must decorrelate (rho well below 0.5).",
        "Captum's plain Guided Backprop, the fine-detail factor of Guided Grad-CAM, is measured as a reference.",
        "",
        "| randomised down to | " + " | ".join(f"{_METHOD_NAMES[m]} median rho (IQR) | const." for m in METHODS) + " |",
        "|---|" + "---|---|" * len(METHODS),
    ]
    for step in steps:
        cells = []
        for method in METHODS:
            values = step.rho[method][~np.isnan(step.rho[method])]
            spread = "" if not len(values) else " ({:.2f} to {:.2f})".format(*np.percentile(values, [25, 75]))
            cells += [f"{step.median(method):.3f}{spread}", str(step.constant[method])]
        lines.append(f"| `{step.layer}` | " + " | ".join(cells) + " |")
    medians = {m: [step.median(m) for step in steps] for m in METHODS}
    worst = int(np.argmax(medians["gradcam"]))
    gap = max(abs(a - b) for a, b in zip(medians["gradcam"], medians["guided_gradcam"], strict=True))
    lines += [
        "",
        f"Grad-CAM: the largest median rho is {medians['gradcam'][worst]:.2f} (randomised down to "
        f"`{steps[worst].layer}`), {'below' if medians['gradcam'][worst] < 0.5 else 'NOT below'} 0.5 at every step.",
    ]
    if worst > 0:
        lines.append(
            "The correlation is not monotone: with the layers above a still-trained lower stage random, that stage's "
            "response to the defect still passes through the random layers, so the map keeps some of its layout."
        )
    backprop = medians["guided_backprop"]
    above = next((i for i, rho in enumerate(backprop) if rho < 0.5), len(steps))
    lines += [
        f"Guided Grad-CAM tracks Grad-CAM (medians within {gap:.2f} at every step): over the whole map, its ranks are",
        "set by the coarse Grad-CAM factor it is multiplied by. Its fine detail is Guided Backprop's, and that alone",
        f"keeps a median rho of {backprop[0]:.2f} with only the classifier random and stays above 0.5 for the first "
        f"{above} of {len(steps)} steps: as Adebayo et al. found, guided backprop barely depends on the top layers (it",
        "largely reconstructs image edges), so read a Guided Grad-CAM picture for where (its Grad-CAM factor) more",
        "than for the exact pixels.",
        "",
    ]
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


def render_report(
    agreements: Sequence[Agreement],
    outcome: Localisation,
    steps: Sequence[Step],
    written: Sequence[tuple[Path, Example]],
    setup: Setup,
    out: Path,
) -> str:
    """The whole page; image links are relative to ``out``'s folder."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# Are the explanations right? Evaluation report",
        "",
        f"Generated by `python -m handlers.evaluation` on {now} in {setup.seconds:.0f} s.",
        f"Machine: {machine()}.",
        f"Default model weights: `handlers/inspection/inspection.pth`, sha256 `{setup.weights_sha256}`.",
        "All inputs, weights and targets are seeded: a rerun gives the same numbers up to float rounding.",
        "The thresholds are asserted by tests/test_reference_agreement.py, tests/test_localisation.py and",
        "tests/test_sanity_checks.py on smaller sets.",
        "",
    ]
    body = agreement_section(agreements) + localisation_section(outcome, setup) + sanity_section(steps, setup)
    return "\n".join(header + body + examples_section(written, out.parent))
