"""The faithfulness score means something on the default model: section 6 of the report on a smaller set.

The report (docs/evaluation.md) measures 1000 held-out defect images; this set is 60 other
ones (the tests' seed), so the thresholds leave a margin for a smaller sample.
"""

from __future__ import annotations

import numpy as np
import pytest

from handlers.evaluation.__main__ import replace_section
from handlers.evaluation.data import TEST_SEED, default_model, held_out_samples
from handlers.evaluation.faithfulness import CONTROLS, FaithfulnessEvaluation, auroc, evaluate_faithfulness
from handlers.evaluation.report_faithfulness import HEADING, faithfulness_section
from handlers.evaluation.targets import FAITHFULNESS_AUROC_TARGET, FAITHFULNESS_CONTROL_TARGET

PER_DEFECT = 30


@pytest.fixture(scope="module")
def result() -> FaithfulnessEvaluation:
    samples = held_out_samples({"scratch": PER_DEFECT, "dent": PER_DEFECT, "ok": 4}, TEST_SEED)
    return evaluate_faithfulness(
        default_model(), samples, sanity_images=30, costly_images=12, curve_images=20, road_images=6
    )


def test_real_gradcam_maps_outscore_shuffled_uniform_and_inverted_maps(result):
    assert result.images == 2 * PER_DEFECT  # "ok" images have no defect to point at: skipped
    for control in CONTROLS:
        assert result.beats(control) >= FAITHFULNESS_CONTROL_TARGET, control
    assert np.nanmedian(result.gradcam.scores) > 0.9
    assert np.nanmedian(result.controls["uniform"].scores) == 0  # a map of everything keeps nothing apart


def test_the_score_predicts_whether_the_map_points_at_the_defect(result):
    pooled = result.pool()
    assert 0.2 < pooled.hits.mean() < 0.9  # both outcomes are well represented
    assert auroc(pooled.scores, pooled.hits) >= FAITHFULNESS_AUROC_TARGET - 0.05  # report: 1000 images
    natural = result.pool(natural_only=True)
    assert auroc(natural.scores, natural.hits) >= 0.7


def test_maps_of_randomised_models_score_below_the_trained_models(result):
    trained = np.nanmedian(result.gradcam.scores[: result.sanity_images])
    assert result.sanity[0].layer == "classifier"
    assert np.nanmedian(result.sanity[0].maps.scores) < 0.1 < trained  # the classifier alone random
    for step in result.sanity:
        assert step.lower >= 0.8, step.layer
        assert np.nanmedian(step.maps.scores) < trained, step.layer


def test_deletion_and_insertion_rank_the_real_map_first(result):
    real = result.curves["gradcam"]
    for control in CONTROLS:
        assert real.deletion < result.curves[control].deletion, control
        assert real.insertion > result.curves[control].insertion, control


def test_numbers_equal_pytorch_grad_cams(result):
    assert result.agreement.drop < 1e-6
    assert result.agreement.increase_mismatches == 0
    assert result.agreement.coverage < 1e-6


def test_the_score_ranks_maps_like_pytorch_grad_cams_road(result):
    assert result.road.images == 6
    assert result.road.road_beats_shuffled >= 5 / 6 and result.road.score_beats_shuffled >= 5 / 6
    assert result.road.spearman > 0.5  # report, 20 images: see docs/evaluation.md section 6


def test_auroc_counts_ties_half_and_leaves_undefined_scores_out():
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([True, True, False, False])) == 1
    assert auroc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert auroc(np.array([0.1, np.nan, 0.9]), np.array([False, False, True])) == 1


def test_the_section_replaces_itself_in_the_report(result):
    lines = faithfulness_section(result)
    assert lines[0] == HEADING
    page = "# report\n\n## 5. before\n\ntext\n"
    once = replace_section(page, HEADING, lines)
    assert once.startswith(page.rstrip("\n")) and HEADING in once
    assert replace_section(once, HEADING, lines) == once
    later = replace_section(once + "## 7. after\n", HEADING, ["## 6. Faithfulness: short", ""])
    assert "## 7. after" in later and "## 5. before" in later
