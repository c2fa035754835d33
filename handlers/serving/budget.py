"""How many forward passes one batch may cost, so that no batch outlasts TorchServe's response timeout.

Each request's own caps (occlusion forwards, integrated-gradients steps, faithfulness steps) bound
one image; a batch of requests each at its cap, on a large model, could still take longer than the
response timeout, after which TorchServe kills the worker and fails the whole batch. So a batch
has a budget of forward passes (a backward counted as two, ``Explainer.forward_rows``): by default
what the worker measures it can run in ``TIME_SHARE`` of the model's response timeout. A request
that alone needs more is refused with 400; one that no longer fits beside its batch-mates gets 503
(retry): the others are answered.
"""

from __future__ import annotations

import logging
import time

import torch

from ..engine import Explainer

logger = logging.getLogger(__name__)

# Of the response timeout, by the one-image measure below. Methods run their passes in batches of up to 32
# images, which on a CPU can cost more per image than one alone (ResNet-50, one busy thread: 76-79 ms alone,
# 109-115 ms per image at 32), so a full budget takes up to ~3/4 of the timeout; decoding and encoding get the rest.
TIME_SHARE = 0.5
DEFAULT_RESPONSE_TIMEOUT_S = 120  # TorchServe's default for a model whose config sets none
# One image at a time, the best of two forwards: the explainer's load-time probes already ran the model on
# one image (no warm-up needed), a large model's load stays short (ViT-L: ~1 s more), and an image alone
# costs more than its share of a batch, so the budget errs on the safe side.
_TIMED_CALLS = 2


def seconds_per_row(explainer: Explainer) -> float:
    """Seconds a plain forward of one image takes, as measured now (best of ``_TIMED_CALLS``)."""
    image = torch.rand((1, explainer.channels, *explainer.input_size), generator=torch.Generator().manual_seed(0))
    image = image.to(explainer.device)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(_TIMED_CALLS):
            start = time.perf_counter()
            explainer.model(image)
            if image.is_cuda:
                torch.cuda.synchronize(image.device)
            best = min(best, time.perf_counter() - start)
    return best


def measured_budget(explainer: Explainer, response_timeout_s: float) -> int:
    """Forward passes a batch may cost: as many as fit in ``TIME_SHARE`` of the response timeout."""
    per_row = seconds_per_row(explainer)
    budget = max(1, int(TIME_SHARE * response_timeout_s / per_row))
    logger.info(
        "batch budget: %d forward passes (%.2f ms per image, %g%% of a %g s response timeout)",
        budget,
        per_row * 1e3,
        TIME_SHARE * 100,
        response_timeout_s,
    )
    return budget


def admitted(costs: list[int], budget: int) -> list[bool]:
    """Which requests of a batch run, in arrival order: each one that still fits in what is left of
    ``budget`` (a cheap request after a refused heavy one still runs)."""
    left, result = budget, []
    for cost in costs:
        result.append(cost <= left)
        if cost <= left:
            left -= cost
    return result
