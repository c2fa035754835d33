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

import functools
from collections.abc import Iterator, Sequence
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


def explanation_masks(maps: Sequence[torch.Tensor], size: tuple[int, int], for_ranks: bool = False) -> torch.Tensor:
    """Maps clipped at 0, upsampled bilinearly to ``size`` and divided by their maximum: M x H x W in [0, 1].

    An all-zero map stays all zero. Maps of one shape are upsampled together, by two small matrix
    products with F.interpolate's weights (~2.5x cheaper on CPU, equal within 3e-7); ``for_ranks``: by
    F.interpolate itself, whose values have always ordered the curves' pixels (an order of near-equal
    pixels hinges on their last bit).
    """
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, values in enumerate(maps):
        by_shape.setdefault(tuple(values.shape), []).append(i)
    if len(by_shape) == 1:  # the usual case: one method, one resolution
        return _scaled(torch.stack(list(maps)), size, for_ranks)
    masks = torch.empty((len(maps), *size), device=maps[0].device if maps else None)
    for indices in by_shape.values():
        masks[indices] = _scaled(torch.stack([maps[i] for i in indices]), size, for_ranks)
    return masks


def _scaled(maps: torch.Tensor, size: tuple[int, int], for_ranks: bool) -> torch.Tensor:
    """M x h x w maps clipped at 0, bilinear to ``size`` (non-negative in, non-negative out), max 1 each."""
    scaled = maps.float().clamp_min(0)
    if tuple(scaled.shape[-2:]) != size and for_ranks:
        scaled = F.interpolate(scaled[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    elif tuple(scaled.shape[-2:]) != size:
        scaled = _resampled(scaled, size)
    peak = scaled.amax(dim=(1, 2), keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)
    return scaled.div_(peak)  # an all-zero map divided by the smallest float stays all zero


def _resampled(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """M x h x w maps bilinear to ``size`` as ``W_h @ map @ W_w.T``: F.interpolate's weights, in two small products."""
    rows = _bilinear(int(maps.shape[-2]), size[0], maps.device)
    columns = _bilinear(int(maps.shape[-1]), size[1], maps.device)
    return rows @ maps @ columns.T


@functools.lru_cache(maxsize=16)
def _bilinear(size_in: int, size_out: int, device: torch.device) -> torch.Tensor:
    """``size_out`` x ``size_in`` weights of F.interpolate's 1-D bilinear resampling (align_corners=False):
    each output is its two nearest inputs' blend, edges repeated. A normal tensor even when first asked
    for in inference mode, so that a later call may record autograd through it."""
    with torch.inference_mode(False):
        source = ((torch.arange(size_out, dtype=torch.float32) + 0.5) * (size_in / size_out) - 0.5).clamp_min(0)
        low = source.long().clamp_max(size_in - 1)
        high = (low + 1).clamp_max(size_in - 1)
        share = (source - low).clamp(0, 1)  # of the higher neighbour
        outputs = torch.arange(size_out)
        weights = torch.zeros(size_out, size_in)
        weights.index_put_((outputs, low), 1 - share, accumulate=True)
        weights.index_put_((outputs, high), share, accumulate=True)  # at the edge both are the same input
        return weights.to(device)


def _ranks(masks: torch.Tensor) -> torch.Tensor:
    """Each pixel's rank in its map, highest first (0); ties in pixel order."""
    flat = masks.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view(masks.shape)


@dataclass(frozen=True)
class _Curves:
    """The deletion and insertion images, one of each per inner step of every curved map, in that order."""

    maps: torch.Tensor  # C: the item whose map it is
    ranked: torch.Tensor  # C: that map's index in ``ranks``
    delete: torch.Tensor  # C: deletion (all but the top pixels kept) or insertion (only the top ones)
    pixels: torch.Tensor  # C: how many of the map's highest pixels are deleted / inserted
    ranks: torch.Tensor  # K x H x W: the pixel ranks of the K curved maps (``_ranks``)

    def masks(self, start: int, stop: int) -> torch.Tensor:
        """Entries ``start:stop``'s 0/1 masks (bool)."""
        top = self.ranks.index_select(0, self.ranked[start:stop]) < self.pixels[start:stop, None, None]
        return top ^ self.delete[start:stop, None, None]


def _curves(items: Sequence[MapToScore], size: tuple[int, int], device: torch.device) -> _Curves | None:
    """The curves' images of the items with ``steps`` > 1; None when no item has any."""
    curved = [i for i, item in enumerate(items) if item.steps > 1]
    if not curved:
        return None
    pixels = size[0] * size[1]
    maps, ranked, delete, count = [], [], [], []
    for k, i in enumerate(curved):
        for step in range(1, items[i].steps):
            removed = round(step * pixels / items[i].steps)
            maps += [i, i]
            ranked += [k, k]
            delete += [True, False]
            count += [removed, removed]
    masks = explanation_masks([items[i].values.to(device) for i in curved], size, for_ranks=True)
    return _Curves(
        torch.tensor(maps, device=device),
        torch.tensor(ranked, device=device),
        torch.tensor(delete, device=device),
        torch.tensor(count, device=device),
        _ranks(masks).int(),
    )


def _inputs(
    images: torch.Tensor,
    rows: Sequence[int],
    masks: torch.Tensor,
    curves: _Curves | None,
    with_blank: bool,
    per_forward: int,
) -> Iterator[torch.Tensor]:
    """The images to show the model, ``per_forward`` at a time: the blank one if ``with_blank`` (0), the
    explanation image x * m of each map in map order, then the curves' images (x kept or zeroed)."""
    first_map = int(with_blank)
    first_curve = first_map + len(masks)
    total = first_curve + (len(curves.maps) if curves is not None else 0)
    in_order = list(rows) == list(range(len(rows)))  # map i of image i (the usual case): no copy of the images
    row_index = torch.tensor(rows, device=images.device)
    for start in range(0, total, per_forward):
        stop = min(start + per_forward, total)
        inputs = images.new_empty((stop - start, *images.shape[1:]))
        if start < first_map:
            inputs[0].zero_()
        low, high = max(start, first_map) - first_map, min(stop, first_curve) - first_map
        if low < high:
            shown = images[low:high] if in_order else images.index_select(0, row_index[low:high])
            torch.mul(shown, masks[low:high, None], out=inputs[low + first_map - start : high + first_map - start])
        low, high = max(start, first_curve) - first_curve, stop - first_curve
        if curves is not None and low < high:
            shown = images.index_select(0, row_index[curves.maps[low:high]])
            torch.mul(shown, curves.masks(low, high)[:, None], out=inputs[low + first_curve - start :])
        yield inputs


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
    curves = _curves(items, size, device)
    per_forward = max(1, min(max(len(images), _MIN_ROWS), _ROWS_BUDGET // images[0].numel()))
    shown_rows = _inputs(images, [item.row for item in items], masks, curves, blank is None, per_forward)
    with torch.inference_mode():
        shown = torch.cat([_probabilities(model, inputs) for inputs in shown_rows])
    if blank is None:
        blank, shown = shown[0], shown[1:]
    targets = torch.tensor([item.target for item in items], dtype=torch.long, device=device)
    shown_targets = targets if curves is None else torch.cat([targets, targets[curves.maps]])
    values = torch.cat(  # one read-back: each image's target probability, then the blank's, then coverage
        [shown.gather(1, shown_targets[:, None])[:, 0], blank.to(device)[targets], masks.flatten(1).mean(1)]
    ).tolist()
    count, curve_points = len(items), len(shown_targets) - len(items)
    outcomes, points = values[:count], values[count : count + curve_points]
    blank_target, coverage = values[count + curve_points : -count], values[-count:]
    results, start = [], 0
    for item, o, b, cover in zip(items, outcomes, blank_target, coverage, strict=True):
        y = item.confidence
        curve = points[start : start + 2 * max(item.steps - 1, 0)]
        start += len(curve)
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
