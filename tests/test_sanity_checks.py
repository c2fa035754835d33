"""Model-parameter randomisation test (Adebayo et al., 2018) on the default model.

Randomising the trained layers top-down must change the Grad-CAM maps: Spearman rank
correlation with the trained model's maps well below 0.5; see handlers/evaluation/sanity.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handlers.evaluation.data import TEST_SEED, default_model, held_out_images
from handlers.evaluation.sanity import Step, cascade_layers, randomisation_test

IMAGES = 16  # 8 scratch + 8 dent


@pytest.fixture(scope="module")
def steps() -> list[Step]:
    images = held_out_images(IMAGES, seed=TEST_SEED, kinds=("scratch", "dent"))
    return randomisation_test(default_model(), images)


def test_cascade_runs_from_the_classifier_down_to_the_first_convolution():
    names = [layer.name for layer in cascade_layers(default_model())]
    assert names[0] == "classifier"
    assert names[1] == "features.15 + features.16"  # the last conv with its BatchNorm
    assert names[-1] == "features.0 + features.1"
    assert len(names) == 7


def test_gradcam_decorrelates_at_every_cascade_step(steps):
    assert len(steps) == 7
    for step in steps:
        rho = step.rho["gradcam"]
        assert len(rho) == IMAGES
        assert np.isfinite(rho).sum() >= IMAGES // 2, (step.layer, step.constant)  # enough maps to rank
        # "Well below 0.5": the largest median, once the last 3x3 conv is random, is about 0.4.
        assert step.median("gradcam") < 0.45, (step.layer, step.median("gradcam"))
    assert np.mean([step.median("gradcam") for step in steps]) < 0.2


def test_randomising_the_classifier_alone_already_changes_gradcam(steps):
    first = steps[0]
    assert first.layer == "classifier"
    assert np.nanmean(first.rho["gradcam"]) < 0.2


def test_the_trained_model_is_left_untouched():
    model = default_model()
    reference = default_model()
    randomisation_test(model, held_out_images(2, seed=TEST_SEED, kinds=("dent",)), methods=("gradcam",))
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
