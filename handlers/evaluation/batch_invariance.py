"""Does an image's answer depend on the batch it was served in? (issue 15, reproducibility)

TorchServe batches whatever requests arrive together, so the same image meets different
batch-mates, batch sizes and positions. Kernels chosen per batch shape (cuDNN, oneDNN) could
make its maps differ; this measures by how much, per method: the image alone versus at other
positions of batches of other sizes, whose other images ask for other targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..engine import METHODS, Explainer, Job
from ..engine.methods import MethodParams

BATCH_SIZES = (8, 32)


def _normalised(values: torch.Tensor) -> torch.Tensor:
    return values / values.abs().max().clamp_min(torch.finfo(values.dtype).tiny)


def _answer(explainer: Explainer, images: torch.Tensor, jobs: list[Job], position: int) -> list[torch.Tensor]:
    """The max-normalised maps and probabilities of the image at ``position``."""
    result = explainer.explain(images, jobs)[position]
    return [result.probabilities, *(_normalised(e.values) for e in result.explanations)]


def composition_difference(
    explainer: Explainer, probe: torch.Tensor, others: torch.Tensor, method: str, params: MethodParams | None = None
) -> float:
    """Largest max-normalised difference of ``probe``'s maps (and probabilities) between being
    explained alone and last in batches of ``BATCH_SIZES`` (``others`` fills them, with other targets)."""
    params = params or MethodParams()
    classes = explainer.num_classes

    def job(index: int) -> Job:
        if not METHODS[method].class_specific:
            return Job(method, params=params)
        return Job(method, targets=(index % classes,), params=params)

    alone = _answer(explainer, probe[None], [job(0)], 0)
    worst = 0.0
    for size in BATCH_SIZES:
        batch = torch.cat([others[: size - 1], probe[None]])
        jobs = [job(i + 1) for i in range(size - 1)] + [job(0)]
        batched = _answer(explainer, batch, jobs, size - 1)
        worst = max(worst, *(float((a - b).abs().max()) for a, b in zip(alone, batched, strict=True)))
    return worst


def composition_differences(
    explainer: Explainer, images: torch.Tensor, methods: Sequence[str], params: MethodParams | None = None
) -> dict[str, float]:
    """Per method, the worst difference over probes ``images[0]`` and ``images[1]``."""
    others = images[2:]
    if len(others) < max(BATCH_SIZES) - 1:
        needed = max(BATCH_SIZES) + 1
        raise ValueError(f"need {needed} images: 2 probes and the batch-mates of a batch of {max(BATCH_SIZES)}")
    return {
        method: max(composition_difference(explainer, probe, others, method, params) for probe in images[:2])
        for method in methods
    }
