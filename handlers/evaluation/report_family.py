"""The report's sections on the whole method family: agreement, localisation, randomisation.

Every sentence is chosen and filled by the numbers it states; method names and what they
explain come from the engine's registry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..engine.methods import METHODS
from .agreement import Comparison
from .family import FAMILY_SUBJECTS, IG_STEPS, REFERENCES, WINDOW_FRACTION, FamilyAgreement
from .localisation import COSTLY_PARAMS, MethodScore
from .sanity import Step
from .targets import AGREEMENT_TOLERANCE, POINTING_TARGET, SANITY_LIMIT

CELL_PIXELS = 8  # a cell of the default model's 16 x 16 grid, in pixels of its 128 px input
UNCHANGED = 0.999  # a median rho this high: the maps did not change


def display_name(method: str) -> str:
    """The method's name as its registry summary writes it ("Grad-CAM: ..." -> "Grad-CAM")."""
    return METHODS[method].summary.split(":")[0]


def _error(comparison: Comparison | None) -> str:
    if comparison is None:
        return "n/a"
    text = f"{comparison.max_error:.1e}"
    return text + (f" ({comparison.degenerate} const.)" if comparison.degenerate else "")


def _cell(result: FamilyAgreement, method: str) -> str:
    if method in result.skipped:
        return "refused²" if result.skipped[method].startswith("refused") else "not comparable¹"
    found = {c.batch: c for c in result.comparisons if c.method == method}
    return f"{_error(found.get(1))} / {_error(found.get(8))}"


def family_agreement_section(results: Sequence[FamilyAgreement]) -> list[str]:
    """Table method x model (batch 1 / batch 8) of the largest normalised error, then notes."""
    methods = list(dict.fromkeys(c.method for r in results for c in r.comparisons))
    worst = max(r.max_error for r in results)
    lines = [
        "## 1b. Every method against an independent implementation",
        "",
        "Each method of the engine's registry that draws maps, against its reference on the same layer, targets",
        "and inputs as in section 1 (batch 1, then a batch of 8 with a different target per image), at the",
        "reference's resolution; largest |difference| after min-max normalising each map. References: "
        + "; ".join(f"`{m}`: {REFERENCES[m].name}" for m in methods)
        + ".",
        "pytorch-grad-cam runs with in-place ReLUs made out of place (`agreement.OutOfPlaceReLU`, see section 1).",
        "Class-agnostic methods explain every image once (`eigencam`) or as its 16 most activated channels",
        "(`activations`, compared channel for channel).",
        f"Occlusion and integrated gradients run with small settings to keep `make eval` short: windows of a "
        f"1/{WINDOW_FRACTION} of the side with stride = window ({WINDOW_FRACTION**2} perturbed forwards per target), "
        f"{IG_STEPS} steps. The engine calls Captum for both, so these rows check its targets, batching and",
        "reduction (sum over colour channels, then |.|) against a direct Captum call, not Captum's algorithm.",
        "",
        "| method | " + " | ".join(f"{r.subject} b1 / b8" for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for method in methods:
        lines.append(f"| `{method}` | " + " | ".join(_cell(r, method) for r in results) + " |")
    lines += [
        "",
        f"Largest normalised error over all methods, models and batches: **{worst:.1e}** (target <= "
        f"{AGREEMENT_TOLERANCE:.0e}: {'met' if worst <= AGREEMENT_TOLERANCE else '**NOT met**'}).",
        "",
        *_family_notes(results),
    ]
    return [*lines, ""]


def _family_notes(results: Sequence[FamilyAgreement]) -> list[str]:
    """Footnotes: methods not compared and why, EigenCAM's sign, models left out."""
    notes = []
    not_comparable = {
        (m, r.subject, why) for r in results for m, why in r.skipped.items() if not why.startswith("refused")
    }
    if not_comparable:
        by_model: dict[str, tuple[list[str], str]] = {}
        for method, subject, why in sorted(not_comparable):
            by_model.setdefault(subject, ([], why))[0].append(f"`{method}`")
        notes.append(
            "¹ Captum's guided backprop hooks only `nn.ReLU` modules, the engine guides every ReLU call: "
            + "; ".join(f"{', '.join(ms)} on {s} ({why})" for s, (ms, why) in by_model.items())
            + "."
        )
    refused = sorted({r.subject for r in results for why in r.skipped.values() if why.startswith("refused")})
    if refused:
        notes.append(
            "² `cam` needs a global-average-pool + linear head (where it equals Grad-CAM, compared with Captum's "
            f"`LayerGradCam`); on {', '.join(refused)} the engine refuses it per request, which is checked instead."
        )
    flips, maps = sum(r.sign_flips for r in results), sum(r.maps for r in results)
    if maps:
        notes.append(
            f"EigenCAM is compared up to sign, per map: the sign of a principal component is arbitrary; the engine "
            f"orients it to correlate positively with the mean activation, pytorch-grad-cam keeps the SVD's. "
            f"{flips} of {maps} maps matched the reference's negated projection."
        )
    left_out = [s for s in (r.subject for r in results) if s not in FAMILY_SUBJECTS]
    notes.append(
        "vgg16_bn (section 1) is not in this table: pytorch-grad-cam fills `.grad` of its 138 M parameters for each"
        " method, about a minute on 2 cores." + (f" Also left out: {', '.join(left_out)}." if left_out else "")
    )
    return [line for note in notes for line in (note, "")][:-1]


def family_localisation_section(scores: Sequence[MethodScore]) -> list[str]:
    """Pointing game and mass in the defect for every class-specific method, then a reading."""
    others = [name for name, m in METHODS.items() if not m.class_specific and m.explains != "nothing"]
    lines = [
        "### Every class-specific method (same images and classes, same regions)",
        "",
        "Each method's map of the predicted defect class on the single-defect images above, scored on the same",
        "region (at pixel resolution for input-resolution maps). Methods that run many passes per map are scored",
        f"on the first {min(len(s.hits) for s in scores)} images only, occlusion with a {COSTLY_PARAMS.window} px "
        f"window and stride (a quarter of the served default's forwards), integrated gradients with the served "
        f"{COSTLY_PARAMS.steps} steps. Not scored: {', '.join(f'`{m}`' for m in others)}, which are not "
        "class-specific.",
        "",
        "| method | map | images | maximum in region | mean mass in region | uniform map |",
        "|---|---|---|---|---|---|",
    ]
    for score in scores:
        n, hits = len(score.hits), sum(score.hits)
        lines.append(
            f"| `{score.method}` | {METHODS[score.method].resolution} | {n} | {100 * hits / n:.1f}% ({hits}/{n}) | "
            f"{score.mean_energy:.3f} | {np.mean(score.region_share):.3f} |"
        )
    return [*lines, "", *_localisation_reading(scores), ""]


def _localisation_reading(scores: Sequence[MethodScore]) -> list[str]:
    """Which methods reach the pointing target and, for those that don't, what their numbers show."""
    good = [s for s in scores if s.pointing_rate >= POINTING_TARGET]
    lines = [
        f"At or above the {POINTING_TARGET:.0%} pointing target: "
        + (", ".join(f"`{s.method}` ({s.pointing_rate:.1%})" for s in good) or "none")
        + "."
    ]
    for score in (s for s in scores if s.pointing_rate < POINTING_TARGET):
        uniform = float(np.mean(score.region_share))
        spread = score.mean_energy / uniform if uniform else float("nan")
        lines.append(
            f"`{score.method}` points into the defect in {score.pointing_rate:.1%} with {score.mean_energy:.1%} of "
            f"its mass there, {spread:.1f}x what a uniform map puts there: "
            + (
                "most of its mass is on the defect, but its single hottest value often is not."
                if score.mean_energy >= 0.5
                else "most of its mass lies outside the region."
            )
            + _coarseness(score)
        )
    return lines


def _coarseness(score: MethodScore) -> str:
    """A clause for maps made of blocks wider than the region's one-cell tolerance (occlusion windows)."""
    window = score.params.window if "window" in METHODS[score.method].params else None
    if window is None or window <= CELL_PIXELS:
        return ""
    return (
        f" Its map is constant over {window} px windows, coarser than the region's {CELL_PIXELS} px cells and"
        " one-cell tolerance: a window that covers the defect can still have its maximum outside the region."
    )


def family_sanity_section(steps: Sequence[Step]) -> list[str]:
    """Median rho per method (rows) and cascade step (columns), then a reading."""
    methods = list(steps[0].rho)
    lines = [
        "### Every method",
        "",
        "Median Spearman rho per method (rows) with the layers down to the column's randomised; a count in",
        "brackets is the number of constant randomised maps, left out of the median. Costly methods run on the",
        "first images only (the column `images`), with the settings of the localisation table. Activations: each",
        "image's most activated channel of the trained model, compared channel for channel.",
        "",
        "| method | explains | images | " + " | ".join(f"`{s.layer}`" for s in steps) + " |",
        "|---|---|---|" + "---|" * len(steps),
    ]
    for method in methods:
        cells = [f"{s.median(method):.3f}" + (f" ({s.constant[method]})" if s.constant[method] else "") for s in steps]
        row = [f"`{method}`", METHODS[method].explains, str(len(steps[0].rho[method])), *cells]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, "", *_family_sanity_reading(steps, methods), ""]


def _family_sanity_reading(steps: Sequence[Step], methods: Sequence[str]) -> list[str]:
    """Per method: whether it decorrelates below the limit, and where it does not, what that means."""
    lines = []
    below = [m for m in methods if max(s.median(m) for s in steps) < SANITY_LIMIT]
    lines.append(f"Below {SANITY_LIMIT} at every step: " + (", ".join(f"`{m}`" for m in below) or "none") + ".")
    for method in (m for m in methods if m not in below):
        medians = [s.median(method) for s in steps]
        kept = next((i for i, rho in enumerate(medians) if rho < SANITY_LIMIT), len(steps))
        unchanged = [s.layer for s, rho in zip(steps, medians, strict=True) if rho >= UNCHANGED]
        sentence = (
            f"`{method}` keeps a median rho of {medians[0]:.2f} with only `{steps[0].layer}` random and stays at "
            f"{SANITY_LIMIT} or more for the first {kept} of {len(steps)} steps"
        )
        if not METHODS[method].class_specific and unchanged:
            sentence += (
                f"; its maps are unchanged (rho >= {UNCHANGED}) down to `{unchanged[-1]}`: it reads only the"
                " explained layer, which the layers after it cannot change (it is not class-specific, by design)."
            )
        else:
            sentence += (
                ": its maps change little when the top layers are random, less than an explanation of the"
                " model's decision should."
            )
        lines.append(sentence)
    return lines
