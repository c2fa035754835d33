"""Is a map faithful to the model? Measured by showing the model what the map highlights.

For each class-specific map, with x the (normalised) input, m the map clipped at 0,
upsampled bilinearly to the input size and divided by its maximum, and b the baseline
(zero in the model's input space: the input normalisation's mean colour, so a model
without normalisation sees black), the model sees the explanation image E = b + (x - b) * m
(Chattopadhay et al. 2018, "Grad-CAM++": E = I o L). With Y the target's probability on x
(the prediction's), O on E and B on the blank baseline image:

- ``confidence_drop`` = max(0, Y - O) / Y and ``confidence_increase`` = O > Y: the paper's
  Average Drop / Increase in Confidence, per explanation (pytorch-grad-cam's
  ``DropInConfidence`` / ``IncreaseInConfidence`` with softmax targets compute the same O - Y);
- ``evidence_kept`` = (O - B) / (Y - B) in [0, 1]: the share of the class's probability above a
  blank image's that the highlighted part alone keeps;
- ``coverage`` = the mean of m: the share of the image the map highlights (the "complexity"
  of Poppi et al. 2021, pytorch-grad-cam's ``Complexity`` on the upsampled map);
- ``score`` = the harmonic mean of ``evidence_kept`` and 1 - ``coverage``: near 1 when a small
  highlighted region alone keeps the model's evidence for the class, near 0 when that region
  loses it or when the map highlights everything (a map of nothing keeps nothing: 0 too).
  It is ADCC (Poppi et al.) without its coherency term, which would re-run the method.
  None where Y <= B: the model finds no more evidence for the class in the image than in a
  blank one, so there is nothing for a map to keep.
- on request, ``deletion_auc`` and ``insertion_auc`` (Petsiuk et al. 2018, "RISE"): the
  target's probability as the map's highest pixels are replaced by the baseline (deletion,
  lower is better) or put onto the baseline (insertion, higher is better), in ``steps`` equal
  fractions of the pixels, area under the curve by the trapezoid rule (ties in the map:
  pixel order). Both curves' end points are Y and B, so they cost 2 x (steps - 1) forwards.

All perturbed images of a batch (and the blank image, unless its probabilities are given:
they depend on the model only) go through the model in inference mode, after the
prediction (which is never touched), in forwards of as many images as the predicted batch
(at least ``_MIN_ROWS``, at most ``_ROWS_BUDGET`` input values): one map per image is one
forward the size of the prediction's, and more never take more memory at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_STEPS = 8
# Rows per forward of perturbed images: the predicted batch's size, at least _MIN_ROWS, at most
# _ROWS_BUDGET input values (64 images at 224 x 224). Larger CPU batches cost more per image
# (measured: inspection 0.38 ms per image at 16-32 rows, 1.03 ms at 113; resnet50 77 ms at 8
# rows, 100 ms at 32), so the deletion / insertion images go in batch-sized chunks.
_MIN_ROWS = 8
_ROWS_BUDGET = 64 * 3 * 224 * 224
_MULTIPLY, _DELETE, _INSERT = 0, 1, 2


@dataclass(frozen=True)
class FaithfulnessParams:
    """What to measure: always the confidence drop; with ``curves``, deletion and insertion in ``steps``."""

    curves: bool = False
    steps: int = DEFAULT_STEPS


@dataclass(frozen=True)
class Faithfulness:
    """How faithful one map is to the model (the module docstring defines every field)."""

    score: float | None
    confidence_drop: float
    confidence_increase: bool
    evidence_kept: float | None
    coverage: float
    deletion_auc: float | None = None
    insertion_auc: float | None = None


@dataclass(frozen=True)
class MapToScore:
    """One class-specific map of image ``row`` for class ``target``, whose probability there is ``confidence``."""

    row: int
    target: int
    values: torch.Tensor  # h x w, any resolution
    confidence: float
    steps: int = 0  # deletion / insertion steps; 0: the confidence drop only


def explanation_masks(maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Maps clipped at 0, upsampled bilinearly to ``size`` and divided by their maximum: M x H x W in [0, 1].

    An all-zero map stays all zero. Maps of one shape are upsampled together.
    """
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, values in enumerate(maps):
        by_shape.setdefault(tuple(values.shape), []).append(i)
    if len(by_shape) == 1:  # the usual case: one method, one resolution
        return _scaled(torch.stack(list(maps)), size)
    masks = torch.empty((len(maps), *size), device=maps[0].device if maps else None)
    for indices in by_shape.values():
        masks[indices] = _scaled(torch.stack([maps[i] for i in indices]), size)
    return masks


def _scaled(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """M x h x w maps clipped at 0, bilinear to ``size`` (non-negative in, non-negative out), max 1 each."""
    scaled = maps.float().clamp_min(0)[:, None]
    if tuple(scaled.shape[-2:]) != size:
        scaled = F.interpolate(scaled, size=size, mode="bilinear", align_corners=False)
    peak = scaled.amax(dim=(1, 2, 3), keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)
    return scaled.div_(peak)[:, 0]  # an all-zero map divided by the smallest float stays all zero


def _ranks(masks: torch.Tensor) -> torch.Tensor:
    """Each pixel's rank in its map, highest first (0); ties in pixel order."""
    flat = masks.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view(masks.shape)


@dataclass(frozen=True)
class _Plan:
    """The perturbed images to show the model, one per entry: which map, how, at which step."""

    map_index: torch.Tensor  # R
    kind: torch.Tensor  # R: _MULTIPLY, _DELETE or _INSERT
    pixels: torch.Tensor  # R: how many of the map's highest pixels are deleted / inserted


def _plan(items: Sequence[MapToScore], pixels: int, device: torch.device) -> _Plan:
    index, kind, count = [], [], []
    for i, item in enumerate(items):
        index.append(i)
        kind.append(_MULTIPLY)
        count.append(0)
        for step in range(1, item.steps):
            removed = round(step * pixels / item.steps)
            index += [i, i]
            kind += [_DELETE, _INSERT]
            count += [removed, removed]
    return _Plan(*(torch.tensor(values, dtype=torch.long, device=device) for values in (index, kind, count)))


def _perturbed(
    images: torch.Tensor, rows: torch.Tensor, masks: torch.Tensor, ranks: torch.Tensor, plan: _Plan, blank: bool
) -> torch.Tensor:
    """The images of ``plan`` (after a blank one if ``blank``): x blended with the baseline (0) by the map,
    or kept / zeroed by a deletion or insertion step's mask."""
    inputs = images.new_empty((len(plan.map_index) + int(blank), *images.shape[1:]))
    shown = inputs[int(blank) :]
    torch.index_select(images, 0, rows[plan.map_index], out=shown)
    mask = masks.index_select(0, plan.map_index)
    curve = torch.nonzero(plan.kind != _MULTIPLY).flatten()
    if len(curve):
        top = ranks.index_select(0, plan.map_index[curve]) < plan.pixels[curve, None, None]
        top ^= (plan.kind[curve] == _DELETE)[:, None, None]  # deletion keeps all but the top pixels
        mask[curve] = top.to(mask.dtype)
    shown.mul_(mask.unsqueeze(1))
    if blank:
        inputs[0].zero_()
    return inputs


def _probabilities(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(inputs).float(), dim=1)


def _auc(points: Sequence[float]) -> float:
    """Area under a curve sampled at equal steps on [0, 1] (trapezoid rule), from its points."""
    return (points[0] / 2 + sum(points[1:-1]) + points[-1] / 2) / (len(points) - 1)


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def blank_probabilities(model: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """``model``'s class probabilities on the blank image (the baseline everywhere) of ``like``'s shape."""
    with torch.inference_mode():
        return _probabilities(model, torch.zeros_like(like[:1]))[0]


def measure(
    model: nn.Module, images: torch.Tensor, items: Sequence[MapToScore], blank: torch.Tensor | None = None
) -> list[Faithfulness]:
    """The faithfulness of each map in ``items`` to ``model`` (eval mode) on ``images`` (N x C x H x W).

    One batched forward of every perturbed image, in inference mode; ``blank``: the model's
    probabilities on the blank image (``blank_probabilities``), else that image joins the forward.
    """
    if not items:
        return []
    size = (int(images.shape[-2]), int(images.shape[-1]))
    device = images.device
    masks = explanation_masks([item.values.to(device) for item in items], size)
    curved = [i for i, item in enumerate(items) if item.steps > 1]
    ranks = torch.zeros_like(masks, dtype=torch.int32) if curved else masks.new_empty(0, dtype=torch.int32)
    if curved:
        ranks[curved] = _ranks(masks[curved]).int()
    plan = _plan(items, size[0] * size[1], device)
    rows = torch.tensor([item.row for item in items], dtype=torch.long, device=device)
    per_forward = max(1, min(max(len(images), _MIN_ROWS), _ROWS_BUDGET // images[0].numel()))
    probabilities = []
    with torch.inference_mode():
        for start in range(0, len(plan.map_index), per_forward):
            part = _Plan(*(t[start : start + per_forward] for t in (plan.map_index, plan.kind, plan.pixels)))
            first = start == 0 and blank is None
            probabilities.append(_probabilities(model, _perturbed(images, rows, masks, ranks, part, first)))
        shown = torch.cat(probabilities)
    if blank is None:
        blank, shown = shown[0], shown[1:]
    targets = torch.tensor([item.target for item in items], dtype=torch.long, device=device)
    shown_target = shown[torch.arange(len(shown), device=device), targets[plan.map_index]].tolist()
    blank_target = blank.to(device)[targets].tolist()
    coverage = masks.flatten(1).mean(1).tolist()
    results, start = [], 0
    for item, b, cover in zip(items, blank_target, coverage, strict=True):
        y, o = item.confidence, shown_target[start]
        curve = shown_target[start + 1 : start + 1 + 2 * max(item.steps - 1, 0)]
        start += 1 + len(curve)
        kept = min(max((o - b) / (y - b), 0.0), 1.0) if y - b > 1e-6 else None
        results.append(
            Faithfulness(
                score=None if kept is None else _harmonic(kept, 1.0 - cover),
                confidence_drop=max(0.0, y - o) / y if y > 0 else 0.0,
                confidence_increase=o > y,
                evidence_kept=kept,
                coverage=cover,
                deletion_auc=_auc([y, *curve[0::2], b]) if item.steps > 1 else None,
                insertion_auc=_auc([b, *curve[1::2], y]) if item.steps > 1 else None,
            )
        )
    return results
