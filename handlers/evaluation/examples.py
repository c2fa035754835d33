"""Example pictures of the default model's maps: image | Grad-CAM overlay | Guided Grad-CAM.

The image panel outlines the ground-truth defect masks (green), so a reader can judge
each map against the truth without the metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..engine import Explainer, Job
from ..inspection import CLASSES, INPUT_SIZE
from ..inspection.synthetic import Sample, preprocess
from ..render import jet, normalise, overlay, resize_map
from .localisation import DEFECTS, Localisation

PANEL = 256  # side of each panel in pixels (the 128 px images, upscaled for reading)
_OUTLINE = np.array([0, 255, 0], dtype=np.uint8)


@dataclass(frozen=True)
class Example:
    """One picture to draw: a sample, the class whose maps are drawn, and a caption."""

    slug: str
    sample: Sample
    target: str
    caption: str


def _outline(masks: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Boolean boundary pixels of the masks, at ``size`` x ``size``."""
    edges = torch.zeros((size, size), dtype=torch.bool)
    for mask in masks:
        pixels = torch.as_tensor(mask, dtype=torch.float32)[None, None]
        big = F.interpolate(pixels, size=(size, size), mode="nearest")
        grown = F.max_pool2d(big, 3, stride=1, padding=1)
        edges |= (grown - big)[0, 0] > 0
    return edges.numpy()


def panel_strip(explainer: Explainer, sample: Sample, target: str) -> Image.Image:
    """The three panels of one sample side by side, for the class ``target``."""
    image = Image.fromarray(sample.image).resize((PANEL, PANEL), Image.Resampling.BILINEAR)
    x = preprocess(sample.image)[None]
    target_index = CLASSES.index(target)
    (cam,) = explainer.explain(x, [Job("gradcam", (target_index,))])
    (guided,) = explainer.explain(x, [Job("guided_gradcam", (target_index,))])
    truth = np.asarray(image).copy()
    truth[_outline(list(sample.masks.values()), PANEL)] = _OUTLINE
    guided_map = resize_map(normalise(guided.explanations[0].values), (PANEL, PANEL)).numpy()
    panels = [truth, np.asarray(overlay(image, normalise(cam.explanations[0].values))), jet(guided_map)]
    return Image.fromarray(np.concatenate(panels, axis=1))


def pick_examples(samples: Sequence[Sample], outcome: Localisation) -> list[Example]:
    """Correct and incorrect cases from a scored held-out set: the first of each, so deterministic."""
    examples: list[Example] = []
    for kind in DEFECTS:
        hit = next((d for d in outcome.defects if d.kind == d.predicted == kind and d.gradcam_hit), None)
        if hit:
            caption = f"{kind}, predicted {kind}: the Grad-CAM maximum is on the defect"
            examples.append(Example(f"correct_{kind}", samples[hit.index], kind, caption))
    mixed = next((m for m in outcome.mixed if m.discriminative), None)
    if mixed is not None:
        for defect in DEFECTS:
            caption = f"scratch+dent, maps of class {defect}: the Grad-CAM maximum is on the {defect}"
            examples.append(Example(f"correct_mixed_{defect}", samples[mixed.index], defect, caption))
    wrong = next((d for d in outcome.defects if d.predicted != d.kind), None)
    if wrong:
        caption = f"{wrong.kind}, predicted {wrong.predicted} (wrong); maps of class {wrong.explained}"
        examples.append(Example("wrong_prediction", samples[wrong.index], wrong.explained, caption))
    missed = next((d for d in outcome.defects if d.predicted == d.kind and not d.gradcam_hit), None)
    if missed:
        caption = f"{missed.kind}, predicted correctly, but the Grad-CAM maximum is outside the defect"
        examples.append(Example("missed_pointing", samples[missed.index], missed.explained, caption))
    confused = next((m for m in outcome.mixed if not m.discriminative), None)
    if confused:
        defect = next(d for d in DEFECTS if not confused.hits[d] or confused.confused[d])
        where = "outside the" if not confused.hits[defect] else "also on the other defect, not only on the"
        caption = f"scratch+dent, maps of class {defect}: the Grad-CAM maximum is {where} {defect}"
        examples.append(Example("missed_mixed", samples[confused.index], defect, caption))
    return examples


def write_examples(model: torch.nn.Module, examples: Sequence[Example], directory: Path) -> list[tuple[Path, Example]]:
    """Save one PNG per example under ``directory``; returns (path, example) pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    explainer = Explainer(model, (INPUT_SIZE, INPUT_SIZE))
    written = []
    for example in examples:
        path = directory / f"{example.slug}.png"
        panel_strip(explainer, example.sample, example.target).save(path, optimize=True)
        written.append((path, example))
    return written
