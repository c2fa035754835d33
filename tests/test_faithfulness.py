"""The faithfulness measure of handlers/engine/faithfulness.py: definitions, cost, and the prediction left alone.

Numbers are checked against pytorch-grad-cam's metrics where the definitions coincide:
``DropInConfidence`` / ``IncreaseInConfidence`` (the explanation image x * map with a
softmax target), ``Complexity`` (the map's mean) and its remove-most / least-relevant-first
perturbations with a constant imputer (one point of the deletion / insertion curves).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam.metrics.arcc import Complexity
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

import handlers.engine.faithfulness as faithfulness
from handlers.engine import METHODS, Explainer, FaithfulnessParams, Job, MethodError, MethodLimits, MethodParams
from handlers.engine.faithfulness import MapToScore, blank_probabilities, explanation_masks, measure
from handlers.evaluation.data import TEST_SEED, default_model, held_out_images
from handlers.inspection import CLASSES, INPUT_SIZE

DROP = FaithfulnessParams()
FULL = FaithfulnessParams(curves=True, steps=8)
SMALL = MethodParams(window=32, stride=32, steps=4)  # occlusion and integrated gradients, cheaply
CLASS_SPECIFIC = [name for name, method in METHODS.items() if method.class_specific]
SIZE = (INPUT_SIZE, INPUT_SIZE)


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(default_model(), SIZE)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return held_out_images(6, seed=TEST_SEED, kinds=("scratch", "dent", "ok"))


def _counting_forwards(model: torch.nn.Module) -> list[int]:
    """A list that gets one entry (the batch size) per forward of ``model``."""
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, output: calls.append(int(args[0].shape[0])))
    return calls


@pytest.mark.parametrize("method", CLASS_SPECIFIC)
def test_asking_for_faithfulness_never_changes_the_prediction_or_the_maps(explainer, images, method):
    targets = [(1,), (2, 0), (1,), (0, 2), (2,), (1, 2)]  # one or two per image, different per image
    plain = explainer.explain(images, [Job(method, t, params=SMALL) for t in targets])
    measured = explainer.explain(images, [Job(method, t, params=SMALL, faithfulness=FULL) for t in targets])
    for before, after, wanted in zip(plain, measured, targets, strict=True):
        assert torch.equal(before.probabilities, after.probabilities)
        assert [e.target for e in after.explanations] == list(wanted)
        for a, b in zip(before.explanations, after.explanations, strict=True):
            assert torch.equal(a.values, b.values)
            assert a.faithfulness is None and b.faithfulness is not None
            f = b.faithfulness
            assert 0 <= f.confidence_drop <= 1 and 0 <= f.coverage <= 1
            assert f.deletion_auc is not None and 0 <= f.deletion_auc <= 1
            assert f.insertion_auc is not None and 0 <= f.insertion_auc <= 1
            assert f.score is None or 0 <= f.score <= 1


def test_the_drop_measure_costs_one_batched_forward_for_the_whole_batch():
    explainer = Explainer(default_model(), SIZE)
    calls = _counting_forwards(explainer.model)
    images = held_out_images(5, seed=TEST_SEED)
    explainer.explain(images, [Job("gradcam")] * 5)
    plain = len(calls)
    explainer.explain(images, [Job("gradcam", faithfulness=DROP)] * 5)
    assert calls[2 * plain :] == [1, 5]  # the blank image, once per explainer; then every map
    explainer.explain(images, [Job("gradcam", faithfulness=DROP)] * 5)
    assert len(calls) == 3 * plain + 3 and calls[-1] == 5  # no blank image any more


def test_more_maps_go_in_forwards_no_larger_than_the_batch_or_eight():
    explainer = Explainer(default_model(), SIZE)
    explainer.explain(held_out_images(1, seed=TEST_SEED), [Job("gradcam", faithfulness=DROP)])  # the blank image
    calls = _counting_forwards(explainer.model)
    for n, top in ((5, 2), (12, 2)):
        del calls[:]
        explainer.explain(held_out_images(n, seed=TEST_SEED), [Job("gradcam", top_classes=top, faithfulness=DROP)] * n)
        rows = calls[1:]  # after the prediction's forward
        assert sum(rows) == n * top and max(rows) == max(n, 8)


def test_the_blank_images_probabilities_measured_apart_or_in_the_batch_agree(explainer, images):
    results = explainer.explain(images, [Job("gradcam")] * len(images))
    maps = torch.stack([r.explanations[0].values for r in results])
    items = _items(explainer, images, maps, [r.explanations[0].target for r in results], steps=4)
    apart = measure(explainer.model, images, items, blank_probabilities(explainer.model, images))
    for a, b in zip(apart, measure(explainer.model, images, items), strict=True):
        for field in ("confidence_drop", "coverage", "deletion_auc", "insertion_auc"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), abs=1e-6)
        assert (a.score is None) == (b.score is None)
        assert a.score is None or a.score == pytest.approx(b.score, abs=1e-5)


def test_curves_cost_two_forwards_per_inner_step_in_one_batch():
    explainer = Explainer(default_model(), SIZE)
    calls = _counting_forwards(explainer.model)
    explainer.explain(held_out_images(3, seed=TEST_SEED), [Job("gradcam", faithfulness=FULL)] * 3)
    rows = calls[2:]  # after the prediction and the blank image
    assert calls[1] == 1 and sum(rows) == 3 * (1 + 2 * (FULL.steps - 1)) and max(rows) == 8


def test_mixed_batch_measures_only_class_specific_maps_in_one_call(explainer, images):
    jobs = [
        Job("gradcam", (1,), faithfulness=DROP),
        Job("eigencam", faithfulness=DROP),
        Job("guided_backprop", (2,), faithfulness=DROP),
        Job("activations", params=MethodParams(channels=2), faithfulness=DROP),
        Job("hirescam", (0, 1)),  # not asked
        Job("layercam", (2,), faithfulness=FULL),
    ]
    results = explainer.explain(images, jobs)
    assert results[0].explanations[0].faithfulness is not None
    assert results[1].explanations[0].faithfulness is None  # a map of no class: nothing to measure
    assert results[2].explanations[0].faithfulness is not None
    assert all(e.faithfulness is None for e in results[3].explanations)
    assert all(e.faithfulness is None for e in results[4].explanations)
    assert results[5].explanations[0].faithfulness.deletion_auc is not None
    assert results[0].explanations[0].faithfulness.deletion_auc is None
    alone = explainer.explain(images[5:6], [jobs[5]])[0].explanations[0].faithfulness
    together = results[5].explanations[0].faithfulness
    for field in ("score", "confidence_drop", "coverage", "deletion_auc", "insertion_auc"):
        assert getattr(alone, field) == pytest.approx(getattr(together, field), abs=1e-5)


def test_chunked_forwards_give_the_same_numbers(explainer, images, monkeypatch):
    jobs = [Job("gradcam", faithfulness=FULL)] * len(images)
    one = explainer.explain(images, jobs)
    monkeypatch.setattr(faithfulness, "_ROWS_BUDGET", images[0].numel() * 7)
    chunked = explainer.explain(images, jobs)
    for a, b in zip(one, chunked, strict=True):
        fa, fb = a.explanations[0].faithfulness, b.explanations[0].faithfulness
        assert fa.deletion_auc == pytest.approx(fb.deletion_auc, abs=1e-5)
        assert fa.confidence_drop == pytest.approx(fb.confidence_drop, abs=1e-5)


@pytest.mark.parametrize("cap", [MethodLimits().max_faithfulness_steps, 4])
def test_steps_are_capped_per_model(cap):
    explainer = Explainer(default_model(), SIZE, limits=MethodLimits(max_faithfulness_steps=cap))
    explainer.check(Job("gradcam", faithfulness=FaithfulnessParams(True, cap)))
    for steps in (1, cap + 1):
        with pytest.raises(MethodError, match="faithfulness_steps"):
            explainer.check(Job("gradcam", faithfulness=FaithfulnessParams(True, steps)))
    explainer.check(Job("gradcam", faithfulness=FaithfulnessParams(False, cap + 1)))  # no curves: steps unused


def _items(explainer: Explainer, images: torch.Tensor, maps: torch.Tensor, targets: list[int], steps: int = 0):
    with torch.inference_mode():
        probabilities = torch.softmax(explainer.model(images), 1)
    return [
        MapToScore(i, t, m, float(probabilities[i, t]), steps)
        for i, (t, m) in enumerate(zip(targets, maps, strict=True))
    ]


def test_drop_increase_and_coverage_equal_pytorch_grad_cams(explainer):
    images = held_out_images(8, seed=TEST_SEED, kinds=("scratch", "dent"))
    results = explainer.explain(images, [Job("gradcam")] * len(images))
    targets = [r.explanations[0].target for r in results]
    maps = torch.stack([r.explanations[0].values for r in results])
    maps[1] = maps[0]  # a map of another image: a drop, for a case that is not all zero
    ours = measure(explainer.model, images, _items(explainer, images, maps, targets))
    masks = explanation_masks(list(maps), SIZE).numpy()
    reference = [ClassifierOutputSoftmaxTarget(t) for t in targets]
    with torch.inference_mode():
        y = torch.softmax(explainer.model(images), 1)[torch.arange(len(images)), targets].numpy()
    drop = DropInConfidence()(images, masks, reference, explainer.model)
    increase = IncreaseInConfidence()(images, masks, reference, explainer.model)
    np.testing.assert_allclose([f.confidence_drop * yi for f, yi in zip(ours, y, strict=True)], drop, atol=1e-6)
    assert [f.confidence_increase for f in ours] == [bool(v) for v in increase]
    np.testing.assert_allclose([f.coverage for f in ours], Complexity()(masks), atol=1e-6)
    assert max(drop) > 0.1  # the comparison covered real drops


def test_deletion_and_insertion_points_equal_pytorch_grad_cams_perturbations(explainer):
    images = held_out_images(3, seed=TEST_SEED, kinds=("scratch", "dent"))
    pixels = SIZE[0] * SIZE[1]  # 2**14: map values k / 2**14 and 1 - k / 2**14 are exact and distinct
    generator = torch.Generator().manual_seed(0)
    ranks = [torch.randperm(pixels, generator=generator) + 1 for _ in range(3)]
    maps = torch.stack([(r.float() / pixels).view(SIZE) for r in ranks])
    targets = [1, 2, 1]
    steps = 4
    ours = measure(explainer.model, images, _items(explainer, images, maps, targets, steps))
    blank = torch.softmax(explainer.model(torch.zeros_like(images[:1])), 1)[0].detach()
    reference = [ClassifierOutputSoftmaxTarget(t) for t in targets]
    cams = maps.numpy()

    def impute(tensor, keep):
        return tensor * keep

    deletion, insertion = [], []
    for step in range(1, steps):
        k = round(step * pixels / steps)  # the k highest pixels: deleted, or the only ones inserted
        most = RemoveMostRelevantFirst(100 * (pixels - k - 0.5) / (pixels - 1), impute)
        least = RemoveLeastRelevantFirst(100 * (k - 0.5) / (pixels - 1), impute)
        deletion.append(PerturbationConfidenceMetric(most)(images, cams, reference, explainer.model, return_diff=False))
        insertion.append(
            PerturbationConfidenceMetric(least)(images, cams, reference, explainer.model, return_diff=False)
        )
    with torch.inference_mode():
        y = torch.softmax(explainer.model(images), 1)
    for i, (f, t) in enumerate(zip(ours, targets, strict=True)):
        b, yi = float(blank[t]), float(y[i, t])
        expected_deletion = (yi / 2 + sum(float(d[i]) for d in deletion) + b / 2) / steps
        expected_insertion = (b / 2 + sum(float(d[i]) for d in insertion) + yi / 2) / steps
        assert f.deletion_auc == pytest.approx(expected_deletion, abs=1e-6)
        assert f.insertion_auc == pytest.approx(expected_insertion, abs=1e-6)


def test_maps_of_everything_or_of_nothing_score_zero(explainer):
    images = held_out_images(4, seed=TEST_SEED, kinds=("scratch", "dent"))
    with torch.inference_mode():
        targets = explainer.model(images).argmax(1).tolist()
    assert CLASSES.index("ok") not in targets
    uniform = measure(explainer.model, images, _items(explainer, images, torch.ones(4, 16, 16), targets))
    empty = measure(explainer.model, images, _items(explainer, images, torch.zeros(4, 16, 16), targets))
    for f in uniform:
        assert f.confidence_drop == 0 and f.coverage == 1 and f.score == 0
    for f in empty:
        assert f.coverage == 0 and f.evidence_kept == 0 and f.score == 0


def test_score_is_none_when_the_class_is_no_likelier_than_on_a_blank_image(explainer):
    images = held_out_images(2, seed=TEST_SEED, kinds=("dent",))
    with torch.inference_mode():
        blank = torch.softmax(explainer.model(torch.zeros_like(images[:1])), 1)[0]
        probabilities = torch.softmax(explainer.model(images), 1)
    ok = CLASSES.index("ok")
    assert all(probabilities[:, ok] < blank[ok])  # a dented surface is less "ok" than a blank one
    items = [MapToScore(i, ok, torch.rand(16, 16), float(probabilities[i, ok])) for i in range(2)]
    for f in measure(explainer.model, images, items):
        assert f.score is None and f.evidence_kept is None
        assert 0 <= f.confidence_drop <= 1  # the paper's measures are still defined


def test_explanation_masks_upsample_any_resolution_to_the_input_and_scale_to_one():
    maps = [torch.rand(7, 5), torch.rand(128, 128) * 3, torch.zeros(4, 4), -torch.ones(3, 3)]
    masks = explanation_masks(maps, (32, 48))
    assert masks.shape == (4, 32, 48)
    assert masks[0].max() == pytest.approx(1) and masks[0].min() >= 0
    assert masks[1].max() == pytest.approx(1)
    assert not masks[2].any() and not masks[3].any()  # nothing positive: nothing highlighted


RESIZES = [((16, 16), (128, 128)), ((7, 7), (224, 224)), ((4, 4), (64, 64)), ((9, 13), (100, 77)), ((40, 30), (32, 48))]


@pytest.mark.parametrize(("shape", "size"), RESIZES)
def test_masks_are_f_interpolates_bilinear_and_the_curves_ranks_its_very_values(shape, size):
    maps = torch.rand(3, *shape, generator=torch.Generator().manual_seed(2)) - 0.3
    upsampled = F.interpolate(maps.clamp_min(0)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    expected = upsampled / upsampled.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(explanation_masks(list(maps), size), expected, atol=1e-6, rtol=0)
    assert torch.equal(explanation_masks(list(maps), size, for_ranks=True), expected)
    uniform = explanation_masks([torch.full(shape, 2.5)], size)
    assert torch.equal(uniform, torch.ones_like(uniform))  # the explanation image of a uniform map is the image


def test_masks_first_made_in_inference_mode_still_take_maps_that_require_grad():
    with torch.inference_mode():
        explanation_masks([torch.rand(5, 6)], (30, 31))
    masks = explanation_masks([torch.rand(5, 6, requires_grad=True)], (30, 31))
    assert masks.requires_grad and masks.shape == (1, 30, 31)


def test_works_on_any_batch_and_resolution_of_a_torchvision_model(explainer_for):
    explainer = explainer_for("resnet18", 64)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    jobs = [Job("gradcam", (5, 7), faithfulness=FULL), Job("guided_gradcam", faithfulness=DROP), Job("cam")]
    plain = explainer.explain(images, [Job(j.method, j.targets) for j in jobs])
    results = explainer.explain(images, jobs)
    for a, b in zip(plain, results, strict=True):
        assert torch.equal(a.probabilities, b.probabilities)
    assert [e.faithfulness is not None for r in results for e in r.explanations] == [True, True, True, False]
