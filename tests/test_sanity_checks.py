"""Model-parameter randomisation test (Adebayo et al., 2018) on the default model.

Randomising the trained layers top-down must change the Grad-CAM maps: Spearman rank
correlation with the trained model's maps well below 0.5; see handlers/evaluation/sanity.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handlers.engine.methods import METHODS
from handlers.engine.methods.gradient_cams import GradientCam
from handlers.evaluation.data import TEST_SEED, default_model, held_out_images
from handlers.evaluation.family import costly
from handlers.evaluation.localisation import COSTLY_PARAMS
from handlers.evaluation.sanity import Step, cascade_layers, randomisation_test

IMAGES = 16  # 8 scratch + 8 dent
COSTLY_IMAGES = 4  # occlusion and integrated gradients: the first 4 only
GRADIENT_CAMS = sorted(name for name, m in METHODS.items() if isinstance(m, GradientCam))


@pytest.fixture(scope="module")
def steps() -> list[Step]:
    images = held_out_images(IMAGES, seed=TEST_SEED, kinds=("scratch", "dent"))
    limit = {name: COSTLY_IMAGES for name, m in METHODS.items() if costly(m)}
    return randomisation_test(default_model(), images, params=COSTLY_PARAMS, limit=limit)


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


def test_every_method_is_measured(steps):
    assert set(steps[0].rho) == {name for name, m in METHODS.items() if m.explains != "nothing"}


@pytest.mark.parametrize("method", GRADIENT_CAMS)
def test_the_gradient_cam_family_decorrelates_at_every_step(steps, method):
    # The requirement, 0.5. Largest medians: make eval (100 images) 0.44 (Grad-CAM++), 0.42
    # (LayerCAM), 0.37 (the others); these 16 images 0.45, 0.43 and 0.39.
    for step in steps:
        assert step.median(method) < 0.5, (method, step.layer, step.median(method))


def test_layer_reading_methods_ignore_the_layers_after_their_layer(steps):
    # Activations and EigenCAM read only the explained layer (`features`): with only the
    # classifier random their maps are identical; activations then decorrelate at once.
    for method in ("activations", "eigencam"):
        assert steps[0].median(method) >= 0.999, method
    assert steps[1].median("activations") < 0.3


def test_guided_backprop_occlusion_and_integrated_gradients_stay_correlated_at_first(steps):
    # The failure the report shows (make eval, classifier random: guided backprop 0.83,
    # occlusion 0.82, integrated gradients 0.61), asserted with a margin so a change shows.
    assert steps[0].median("guided_backprop") > 0.7
    assert steps[0].median("occlusion") > 0.5
    assert steps[0].median("integrated_gradients") > 0.4
