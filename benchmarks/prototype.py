"""Prototype of an engine change not in handlers/ yet, measured in section 1: NHWC.

The explainer's model in ``channels_last`` memory format on CPU, with the batch
converted per call: oneDNN's convolutions, forward and above all the backward to the
input that ``guided_gradcam`` needs, are faster in NHWC. Proposed for
``handlers/engine/explainer.py``: ``Explainer.__init__`` converts a CPU model
(``model.to(memory_format=torch.channels_last)``) and ``explain`` converts the batch
(``images.contiguous(memory_format=torch.channels_last)``). Convolutions then round
differently: maps agree to ~1e-3 relative, not bit for bit.

(The two earlier prototypes here, native ReLUs with a guided-gradient hook and no batch
copy in ``explain``, are in the engine since commit b1e62d4.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from handlers.engine import Explainer, Job, SampleResult


def channels_last_call(explainer: Explainer, images: torch.Tensor, method: str) -> Callable[[], object]:
    """``explain`` of the whole batch with ``method``, model and batch in NHWC.

    The explainer's model is converted in place: pass one of its own.
    """
    explainer.model.to(memory_format=torch.channels_last)
    jobs = [Job(method)] * len(images)
    return lambda: explainer.explain(images.contiguous(memory_format=torch.channels_last), jobs)


def max_relative_difference(ours: list[SampleResult], other: list[SampleResult]) -> float:
    """Largest |difference| of two runs' maps, relative to the largest value of each of our maps."""
    worst = 0.0
    for mine, theirs in zip(ours, other, strict=True):
        for a, b in zip(mine.explanations, theirs.explanations, strict=True):
            worst = max(worst, float((a.values - b.values).abs().max() / a.values.abs().max().clamp_min(1e-30)))
    return worst
