"""The default model with its committed weights, and held-out generated images for it.

Held-out means generated from seeds that ``train.py`` never used: the training and test
seeds recorded in inspection.json and inspection_vit.json are refused here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

from ..inspection import WEIGHTS_FILE
from ..inspection.network import InspectionNet
from ..inspection.synthetic import KINDS, Sample, render, to_tensor
from ..inspection.vit import VIT_WEIGHTS_FILE

EVALUATION_SEED = 31  # the report's held-out set
TEST_SEED = 4242  # the tests' smaller held-out set


def training_seeds() -> set[int]:
    """The seeds the committed weights' training and test data came from (the CNN's and the ViT's)."""
    seeds = set()
    for weights in (WEIGHTS_FILE, VIT_WEIGHTS_FILE):
        report = json.loads(weights.with_suffix(".json").read_text())
        seeds |= {int(report["train_seed"]), int(report["test_seed"])}
    return seeds


def default_model() -> InspectionNet:
    """InspectionNet with the committed weights, in eval mode."""
    model = InspectionNet()
    model.load_state_dict(torch.load(WEIGHTS_FILE, weights_only=True))
    return model.eval()


def held_out_samples(counts: dict[str, int], seed: int) -> list[Sample]:
    """``counts[kind]`` rendered samples of each kind, kinds interleaved, from one seeded generator."""
    if seed in training_seeds():
        raise ValueError(f"seed {seed} generated the training or test data of the committed weights")
    unknown = set(counts) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; expected some of {KINDS}")
    rng = np.random.default_rng(seed)
    order = [kind for kind in KINDS for _ in range(counts.get(kind, 0))]
    order = [order[i] for i in rng.permutation(len(order))]
    return [render(kind, rng) for kind in order]


def held_out_images(n: int, seed: int, kinds: Sequence[str] = KINDS) -> torch.Tensor:
    """``n`` preprocessed held-out images cycling through ``kinds``."""
    counts = {kind: n // len(kinds) + (i < n % len(kinds)) for i, kind in enumerate(kinds)}
    return to_tensor([sample.image for sample in held_out_samples(counts, seed)])
