"""Cost control: which predictions of a batch get an explanation, decided from the prediction itself.

A policy combines three rules; a row is explained when ANY of them says so, checked in this
order (the first that fires is the reason given):

1. ``classes``: the predicted (top) class is one of these: always explained ("class").
2. ``below``: the top probability is below this threshold: explained ("uncertain").
3. ``rate``: the row's draw in [0, 1) is below this rate: explained ("sampled").

A row no rule selects is skipped, "confident" when a threshold was set (it was met), else
"not_sampled" when a rate was set, else "other_class". The draw is a deterministic hash of a
key (the request's, or its id), so the same key is always sampled the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

EXPLAINED_REASONS = ("class", "uncertain", "sampled")
SKIPPED_REASONS = ("confident", "not_sampled", "other_class")


@dataclass(frozen=True)
class ExplainPolicy:
    """Explain only some predictions: a threshold on the top probability, a sampling rate, chosen classes."""

    below: float | None = None  # explain when the top probability is below this
    rate: float | None = None  # explain this fraction of requests (by their draw)
    classes: frozenset[int] = frozenset()  # always explain predictions of these classes

    def decide(self, top_class: int, top_probability: float, draw: float) -> Decision:
        """Whether to explain an image predicted ``top_class`` with ``top_probability``, and why."""
        if top_class in self.classes:
            return Decision(True, "class")
        if self.below is not None and top_probability < self.below:
            return Decision(True, "uncertain")
        if self.rate is not None and draw < self.rate:
            return Decision(True, "sampled")
        if self.below is not None:
            return Decision(False, "confident")
        return Decision(False, "not_sampled" if self.rate is not None else "other_class")


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one image: explained or not, and the rule that decided."""

    explained: bool
    reason: str


def draw(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` (SHA-256): sampling that tests and clients can reproduce."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def decide_rows(
    policies: Sequence[ExplainPolicy | None], draws: Sequence[float], probabilities: torch.Tensor
) -> list[Decision | None]:
    """Each row's decision from its N x K ``probabilities`` (None where the row has no policy)."""
    top_probabilities, top_classes = probabilities.detach().float().max(dim=1)
    rows = zip(policies, top_classes.tolist(), top_probabilities.tolist(), draws, strict=True)
    return [None if policy is None else policy.decide(c, p, d) for policy, c, p, d in rows]
