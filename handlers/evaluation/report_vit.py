"""The report's vision-transformer section: the ViT next to the CNN, then Grad-CAM layer by layer.

Every sentence is chosen and filled by the numbers it states, as in ``report.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .localisation import DEFECTS, Localisation, MethodScore
from .targets import DISCRIMINATION_TARGET, POINTING_TARGET
from .transformer import REACH_IMAGES, LayerScore, ViTEvaluation

VIT_POINTING_TARGET = 0.90  # what the ViT's Grad-CAM was asked to reach (the CNN's bar is POINTING_TARGET)


def _rate(hits: int, total: int) -> str:
    return f"{100 * hits / total:.1f}% ({hits}/{total})" if total else "n/a"


def _model_row(name: str, layer: str, grid: str, outcome: Localisation) -> str:
    defects, mixed = outcome.defects, outcome.mixed
    correct = sum(d.predicted == d.kind for d in defects)
    hits = sum(d.gradcam_hit for d in defects)
    energy = np.mean([d.gradcam_energy for d in defects])
    uniform = np.mean([d.region_share for d in defects])
    both = sum(m.discriminative for m in mixed)
    return (
        f"| {name} | `{layer}` | {grid} | {_rate(correct, len(defects))} | {_rate(hits, len(defects))} | "
        f"{energy:.3f} (uniform {uniform:.3f}) | {_rate(both, len(mixed))} |"
    )


def _method_rows(scores: Sequence[MethodScore]) -> list[str]:
    return [
        f"| `{s.method}` | {_rate(sum(s.hits), len(s.hits))} | {s.mean_energy:.3f} | {np.mean(s.region_share):.3f} |"
        for s in scores
    ]


def _layer_rows(layers: Sequence[LayerScore], default: str, best: str) -> list[str]:
    rows = []
    for layer in layers:
        marks = [m for m, on in (("default", layer.layer == default), ("most", layer.layer == best)) if on]
        name = f"`{layer.layer}`" + (f" ({', '.join(marks)})" if marks else "")
        if layer.score is None:
            cells = ["0 (all-zero maps)", "0", f"refused: {layer.refusal}"]
        else:
            s = layer.score
            cells = [_rate(sum(s.hits), len(s.hits)), f"{s.mean_energy:.3f}", "-"]
        rows.append(f"| {name} | {layer.role} | {layer.reach:.2e} | " + " | ".join(cells) + " |")
    return rows


def _layer_reading(evaluation: ViTEvaluation, cnn: Localisation) -> list[str]:
    """Which rule gets the most, where the zero maps are, and how far the best layer is from the bar."""
    layers = [s for s in evaluation.layers if s.score is not None]
    best = evaluation.best_layer
    default = next(s for s in evaluation.layers if s.layer == evaluation.default_layer)
    zero = [s for s in evaluation.layers if s.score is None]
    by_role: dict[str, list[float]] = {}
    for s in layers:
        assert s.score is not None
        by_role.setdefault(s.role, []).append(s.score.pointing_rate)
    assert best.score is not None and default.score is not None
    lines = [
        f"Zero maps: {', '.join(f'`{s.layer}`' for s in zero)} pass only the class token on to the head, so the "
        "gradient of the class score on their patch tokens is exactly "
        + ("0" if all(s.reach == 0.0 for s in zero) else "not 0 (unexpected)")
        + " (column 3): Grad-CAM's channel weights are zero and every map is zero, so the engine refuses these "
        "layers by name instead of drawing blank maps.",
        "Mean pointing game per rule over the layers that reach: "
        + ", ".join(f"{role} {np.mean(rates):.1%} ({len(rates)} layers)" for role, rates in by_role.items())
        + ".",
    ]
    if best.layer == default.layer:
        lines.append(
            f"The default rule (the last map that reaches: `{default.layer}`) is also the layer that points best "
            f"({default.score.pointing_rate:.1%})."
        )
    else:
        lines.append(
            f"The default rule picks `{default.layer}` ({default.score.pointing_rate:.1%}); `{best.layer}` "
            f"({best.role}) points best ({best.score.pointing_rate:.1%}). The default rule guarantees maps that "
            "are not zero, not the layer that localises best."
        )
    lines += _method_reading(evaluation)
    vit_share = float(np.mean([d.region_share for d in evaluation.outcome.defects]))
    cnn_share = float(np.mean([d.region_share for d in cnn.defects]))
    if vit_share > cnn_share:
        lines.append(
            f"The coarser grid does not explain the misses: the ViT's region covers {vit_share:.1%} of the image on "
            f"average, the CNN's {cnn_share:.1%}, which makes the pointing game easier for the ViT, not harder."
        )
    mixed = evaluation.outcome.mixed
    if mixed:
        lines.append(
            f"On the {len(mixed)} images with both defects: "
            + "; ".join(
                f"the `{d}` map is hottest in its own region in {np.mean([m.hits[d] for m in mixed]):.1%} and on "
                f"the other defect in {np.mean([m.confused[d] for m in mixed]):.1%}"
                for d in DEFECTS
            )
            + "."
        )
    lines += _sign_reading(evaluation)
    reached = best.score.pointing_rate >= VIT_POINTING_TARGET
    lines.append(
        f"Grad-CAM on this ViT {'reaches' if reached else 'does not reach'} {VIT_POINTING_TARGET:.0%} at any layer "
        f"(best {best.score.pointing_rate:.1%}, at its default layer {default.score.pointing_rate:.1%}; the CNN: "
        f"{cnn.pointing_rate:.1%} against a bar of {POINTING_TARGET:.0%})."
    )
    return lines


def _sign_table(evaluation: ViTEvaluation) -> list[str]:
    return [
        f"| {c.kind} | {c.images} | {c.positive:.1%} | {c.negative:.1%} | {c.gradient:.1%} |" for c in evaluation.signs
    ]


def _sign_reading(evaluation: ViTEvaluation) -> list[str]:
    """Where the signed map says the misses come from, for the kinds whose negative part points better."""
    flipped = [c for c in evaluation.signs if c.negative > c.positive]
    if not flipped:
        return []
    return [
        "The table below: for "
        + ", ".join(f"{c.kind} ({c.negative:.1%} negative, {c.positive:.1%} positive)" for c in flipped)
        + " it is the negative part of the signed Grad-CAM map that lies on the defect, and the per-cell gradient "
        "norm points there in "
        + ", ".join(f"{c.gradient:.1%}" for c in flipped)
        + ". A LayerNorm's tokens are signed (a CNN's post-ReLU features are not), so a token that carries the "
        "evidence can score negative on the mean-gradient channel weights, and Grad-CAM's ReLU drops it: the misses "
        f"on {' and '.join(c.kind for c in flipped)} images come from the sign convention Grad-CAM takes from CNNs, "
        "not from maps without information."
    ]


def _method_reading(evaluation: ViTEvaluation) -> list[str]:
    """What the other methods at the default layer say about why Grad-CAM misses, chosen by their numbers."""
    by_name = {s.method: s for s in evaluation.methods}
    gradcam = by_name["gradcam"]
    local = [by_name[m] for m in ("hirescam", "layercam") if by_name[m].pointing_rate > gradcam.pointing_rate]
    lines = []
    if local:
        lines.append(
            "At the default layer the methods that weight each cell by its own gradient ("
            + ", ".join(f"`{s.method}` {s.pointing_rate:.1%}" for s in local)
            + f") point more often than Grad-CAM ({gradcam.pointing_rate:.1%}), which weights each channel by its "
            "gradient averaged over all cells: the gradient is more local than the channel weights keep."
        )
    eigen = by_name["eigencam"]
    uniform = float(np.mean(eigen.region_share))
    if eigen.mean_energy < uniform:
        lines.append(
            f"EigenCAM (the activations' first principal component, no gradient) puts {eigen.mean_energy:.3f} of its "
            f"mass on the defect, less than a uniform map ({uniform:.3f}): the strongest pattern in these token "
            "activations is not the defect, so a map that sums channels with coarse weights is dominated by it."
        )
    return lines


def vit_section(evaluation: ViTEvaluation, cnn: Localisation, cnn_layer: str, cnn_grid: str) -> list[str]:
    """Section 5: the ViT's model card, localisation next to the CNN's, the other methods and the layer rule."""
    t = evaluation.training
    arch = t["architecture"]
    grid = "x".join(map(str, evaluation.grid))
    best_method = max(evaluation.methods, key=lambda s: s.pointing_rate)
    lines = [
        "## 5. A vision transformer on the same task (`inspection_vit`)",
        "",
        f"`handlers/inspection/vit.py`: a ViT with a class token, {arch['depth']} pre-norm blocks of width "
        f"{arch['width']} ({arch['heads']} heads, MLP x{arch['mlp_ratio']}), learned position embeddings, a "
        f"convolutional patch embedding of {len(arch['stem'])} stride-2 stages ({arch['patch']} px patches: "
        f"{grid} tokens) and a linear head on the class token; {evaluation.parameters:,} parameters. Trained by "
        f"`python -m handlers.inspection.vit` on the CNN's data and seeds ({t['train_size']} images, "
        f"{t['epochs']} epochs, AdamW lr {t['lr']:g}, weight decay {t['weight_decay']:g}; training report "
        f"`handlers/inspection/inspection_vit.json`, weights sha256 `{t['weights_sha256']}`): "
        f"{t['test_accuracy']:.1%} on its {t['test_size']} held-out test images.",
        "",
        "Same held-out images as section 2, each explained for its predicted defect class; the region is the defect "
        "on each model's own grid, dilated by one cell (so on the ViT's coarser grid a cell is 16 px and the region "
        "covers more of the image: the uniform-map column is what a map without information scores).",
        "",
        "| model | Grad-CAM layer | grid | single-defect images classified right | pointing game | "
        "mass in region | class-discriminative (both maps right) |",
        "|---|---|---|---|---|---|---|",
        _model_row("CNN `inspection`", cnn_layer, cnn_grid, cnn),
        _model_row("ViT `inspection_vit`", evaluation.default_layer, grid, evaluation.outcome),
        "",
        f"Targets: pointing game {POINTING_TARGET:.0%} for the CNN, {VIT_POINTING_TARGET:.0%} asked of the ViT; "
        f"class discrimination {DISCRIMINATION_TARGET:.0%}. The ViT's Grad-CAM pointing game by defect: "
        + ", ".join(
            f"{kind} {_rate(sum(d.gradcam_hit for d in group), len(group))}"
            for kind in DEFECTS
            for group in [[d for d in evaluation.outcome.defects if d.kind == kind]]
        )
        + ".",
        "",
        f"### Other methods at the ViT's default layer `{evaluation.default_layer}`",
        "",
        "| method | pointing game | mass in region | uniform map |",
        "|---|---|---|---|",
        *_method_rows(evaluation.methods),
        "",
        f"Most often on the defect: `{best_method.method}` ({best_method.pointing_rate:.1%}).",
        "",
        "### Grad-CAM layer by layer (the layer rule)",
        "",
        "Every block's first norm (the input of its attention), every block's output and the final norm. Column 3 "
        f"is the largest |d score / d patch token| over the first {REACH_IMAGES} images, for the explained class.",
        "",
        "| layer | role | largest patch gradient | pointing game | mass in region | engine |",
        "|---|---|---|---|---|---|",
        *_layer_rows(evaluation.layers, evaluation.default_layer, evaluation.best_layer.layer),
        "",
        *_layer_reading(evaluation, cnn),
        "",
        f"### Grad-CAM's sign at `{evaluation.default_layer}`",
        "",
        "Grad-CAM before its ReLU (sum over channels of the mean-gradient weight x the activation), on the same "
        "single-defect images: where its positive part (Grad-CAM), its negative part and the per-cell gradient "
        "norm peak (pointing game). The first column reproduces the table above.",
        "",
        "| defect | images | ReLU(+map): Grad-CAM | ReLU(-map) | gradient norm |",
        "|---|---|---|---|---|",
        *_sign_table(evaluation),
        "",
    ]
    return lines
