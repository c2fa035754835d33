"""Every method of the registry equals an independent implementation (pytorch-grad-cam, Captum).

A smaller set than ``make eval``'s table (docs/evaluation.md, section 1b), chosen to cover each
case the references raise: the default model (pool + linear head: ``cam`` compared),
squeezenet1_1 (no linear head: ``cam`` refused; 5x5 maps), densenet121 (an in-place ReLU
after the layer, a functional ReLU Captum's guide misses). See handlers/evaluation/family.py.
"""

from __future__ import annotations

import functools

import pytest
import torch

from handlers.engine.methods import METHODS
from handlers.evaluation.family import (
    FAMILY_SUBJECTS,
    REFERENCES,
    FamilyAgreement,
    _orient,
    compared_methods,
    family_agreement,
)

TOLERANCE = 1e-4  # largest |difference| of min-max normalised maps, and of raw maps / peak
SUBJECTS = ("inspection", "squeezenet1_1", "densenet121")
REFUSES_CAM = {"squeezenet1_1", "densenet121"}  # heads that are not pool + linear
GUIDED_NOT_COMPARABLE = {"densenet121"}  # one F.relu, which Captum's nn.ReLU hooks do not guide


@functools.cache
def _family(subject: str) -> FamilyAgreement:
    return family_agreement(subject)


def test_every_method_that_draws_maps_has_a_reference():
    assert set(REFERENCES) == set(compared_methods())
    assert set(compared_methods()) == {name for name, m in METHODS.items() if m.explains != "nothing"}


def test_the_eval_table_covers_at_least_six_torchvision_architectures():
    assert len(set(FAMILY_SUBJECTS) - {"inspection"}) >= 6
    assert set(SUBJECTS) <= set(FAMILY_SUBJECTS)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_every_method_agrees_at_batch_1_and_8(subject):
    result = _family(subject)
    expected_skips = set()
    if subject in REFUSES_CAM:
        expected_skips.add("cam")
    if subject in GUIDED_NOT_COMPARABLE:
        expected_skips |= {"guided_gradcam", "guided_backprop"}
    assert set(result.skipped) == expected_skips
    compared = {(c.method, c.batch) for c in result.comparisons}
    assert compared == {(m, b) for m in compared_methods() if m not in expected_skips for b in (1, 8)}
    for comparison in result.comparisons:
        assert comparison.max_error <= TOLERANCE, comparison
        assert comparison.max_relative_error <= TOLERANCE, comparison  # raw values: constant maps too
    # Random weights leave some maps all zero (in make eval, mobilenet_v3_large's XGrad-CAM: most
    # of the batch), which normalised errors skip; every method must still have informative maps.
    for method in {c.method for c in result.comparisons}:
        informative = sum(c.batch - c.degenerate for c in result.comparisons if c.method == method)
        assert informative >= 2, (subject, method)


@pytest.mark.parametrize("subject", sorted(REFUSES_CAM))
def test_cam_is_refused_where_the_head_is_not_pool_plus_linear(subject):
    assert _family(subject).skipped["cam"].startswith("refused")


def test_cam_equals_captum_gradcam_on_a_pool_plus_linear_head():
    cams = [c for c in _family("inspection").comparisons if c.method == "cam"]
    assert [c.reference for c in cams] == ["Captum LayerGradCam"] * 2


def test_eigencam_is_compared_up_to_sign_on_every_map():
    for subject in SUBJECTS:
        result = _family(subject)
        assert result.maps == 9  # batch 1 + batch 8, one map per image
        assert 0 <= result.sign_flips <= result.maps


def test_orient_picks_the_sign_closer_to_ours_map_by_map():
    signed = torch.tensor([[[1.0, -2.0]], [[-1.0, 3.0]]])
    ours = torch.tensor([[[0.0, 2.0]], [[0.0, 3.0]]])  # first map from -signed, second from +signed
    oriented, flips = _orient(ours, signed)
    assert flips == 1 and torch.equal(oriented, ours)
