"""The default model's Grad-CAM maps (and those of every class-specific method) point at the defects.

Required: pointing game >= 95% of single-defect images, class
discrimination >= 90% of scratch+dent images; see handlers/evaluation/localisation.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handlers.engine.methods import METHODS
from handlers.engine.methods.gradient_cams import GradientCam
from handlers.evaluation.data import TEST_SEED, default_model, held_out_samples, training_seeds
from handlers.evaluation.family import costly
from handlers.evaluation.localisation import Localisation, MethodScore, family_localisation, localisation
from handlers.evaluation.maps import dilate, energy_share, mask_to_grid, points_into, to_resolution, tolerance_region

COUNTS = {"scratch": 100, "dent": 100, "scratch+dent": 100}


@pytest.fixture(scope="module")
def outcome() -> Localisation:
    return localisation(default_model(), held_out_samples(COUNTS, TEST_SEED))


def test_pointing_game_hits_at_least_95_percent(outcome):
    assert len(outcome.defects) == COUNTS["scratch"] + COUNTS["dent"]
    assert outcome.pointing_rate >= 0.95, f"{outcome.pointing_rate:.3f}"


@pytest.mark.parametrize("kind", ["scratch", "dent"])
def test_pointing_game_holds_for_each_defect_kind(outcome, kind):
    hits = [d.gradcam_hit for d in outcome.defects if d.kind == kind]
    assert len(hits) == COUNTS[kind] and np.mean(hits) >= 0.9


def test_each_class_map_picks_its_own_defect_in_90_percent(outcome):
    assert len(outcome.mixed) == COUNTS["scratch+dent"]
    assert outcome.discriminative_rate >= 0.90, f"{outcome.discriminative_rate:.3f}"


def test_maps_concentrate_in_the_defect_far_beyond_chance(outcome):
    region = np.mean([d.region_share for d in outcome.defects])
    for method in ("gradcam_energy", "guided_energy"):
        energy = np.array([getattr(d, method) for d in outcome.defects])
        assert energy.mean() > 3 * region, (method, energy.mean(), region)
        assert np.median(energy) > 0.5, method


def test_the_held_out_set_never_reuses_training_seeds():
    assert TEST_SEED not in training_seeds()
    with pytest.raises(ValueError, match="training or test data"):
        held_out_samples({"dent": 1}, seed=sorted(training_seeds())[0])


def test_region_is_the_mask_on_the_grid_grown_by_one_cell():
    mask = np.zeros((32, 32), dtype=bool)
    mask[9, 9] = True  # one pixel in cell (2, 2) of an 8 x 8 grid of 4 x 4 pixel cells
    cells = mask_to_grid(mask, (8, 8))
    assert cells.sum() == 1 and cells[2, 2]
    region = tolerance_region(mask, (8, 8))
    assert torch.equal(region, dilate(cells)) and region.sum() == 9 and region[1:4, 1:4].all()
    assert to_resolution(region, (32, 32)).sum() == 9 * 16


def test_pointing_and_energy_on_hand_made_maps():
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[0, 0] = True
    inside = torch.zeros(4, 4)
    inside[0, 0], inside[3, 3] = 3.0, 1.0
    assert points_into(inside, region) and energy_share(inside, region) == 0.75
    assert not points_into(inside.flip(0, 1), region)
    assert not points_into(torch.zeros(4, 4), region) and energy_share(torch.zeros(4, 4), region) == 0.0


# Every class-specific method of the registry, on the same images (the costly ones on the first 40).
COSTLY_IMAGES = 40
# The methods we claim point at the evidence: the gradient-CAM family and Guided Grad-CAM
# (make eval: 99.8-99.9% of 1,000 images), held to the 95% requirement.
CLAIMED_GOOD = {name for name, m in METHODS.items() if isinstance(m, GradientCam)} | {"guided_gradcam"}


@pytest.fixture(scope="module")
def scores(outcome) -> dict[str, MethodScore]:
    samples = held_out_samples(COUNTS, TEST_SEED)
    return {s.method: s for s in family_localisation(default_model(), samples, outcome, COSTLY_IMAGES)}


def test_every_class_specific_method_is_scored(scores):
    assert set(scores) == {name for name, m in METHODS.items() if m.class_specific}
    assert {n for n, s in scores.items() if len(s.hits) == COSTLY_IMAGES} == {n for n in scores if costly(METHODS[n])}


def test_the_gradient_cam_family_points_at_the_defect_in_95_percent(scores):
    for method in CLAIMED_GOOD:
        assert scores[method].pointing_rate >= 0.95, (method, scores[method].pointing_rate)
        assert scores[method].mean_energy > 0.8, (method, scores[method].mean_energy)


def test_the_other_methods_do_what_the_report_shows(scores):
    # Not claimed good, asserted at what make eval measures minus a margin, so a regression shows:
    # guided backprop 96.6% / 0.74 (barely class-specific, but the defect is the image's
    # strongest edge); integrated gradients 100% / 0.76 on 100 images; occlusion 73% with 2x a
    # uniform map's mass (16 px windows, coarser than the region's tolerance).
    uniform = np.mean(scores["occlusion"].region_share)
    assert scores["guided_backprop"].pointing_rate >= 0.85 and scores["guided_backprop"].mean_energy > 0.6
    assert scores["integrated_gradients"].pointing_rate >= 0.85 and scores["integrated_gradients"].mean_energy > 0.6
    assert scores["occlusion"].pointing_rate >= 0.5 and scores["occlusion"].mean_energy > 1.5 * uniform
