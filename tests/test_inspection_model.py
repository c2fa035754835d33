"""The embedded inspection model: generator contract, committed weights and target layer."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.inspection import CLASSES, IMAGE_SIZE, INPUT_SIZE, WEIGHTS_FILE
from handlers.inspection.network import InspectionNet
from handlers.inspection.synthetic import KINDS, MIXED_LABEL, make_dataset, preprocess, render, to_tensor

HELD_OUT_SEED = 2024  # never used by train.py (its seeds are recorded in inspection.json)


def _rendered(kind: str, count: int = 6, seed: int = 3) -> list:
    rng = np.random.default_rng(seed)
    return [render(kind, rng) for _ in range(count)]


def test_dataset_is_deterministic_for_a_seed() -> None:
    first, second, other = make_dataset(9, seed=7), make_dataset(9, seed=7), make_dataset(9, seed=8)
    assert [s.kind for s in first] == [s.kind for s in second]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        assert a.masks.keys() == b.masks.keys()
        for name in a.masks:
            np.testing.assert_array_equal(a.masks[name], b.masks[name])
    assert any(not np.array_equal(a.image, c.image) for a, c in zip(first, other, strict=True))


@pytest.mark.parametrize("n", [30, 31, 32])
def test_dataset_is_balanced(n: int) -> None:
    counts = Counter(sample.label for sample in make_dataset(n, seed=5))
    assert set(counts) == set(range(len(CLASSES)))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_labels_match_kinds_and_class_order() -> None:
    assert CLASSES == ("ok", "scratch", "dent")
    for sample in make_dataset(12, seed=4):
        assert CLASSES[sample.label] == sample.kind


@pytest.mark.parametrize("kind", KINDS)
def test_image_is_rgb_uint8(kind: str) -> None:
    for sample in _rendered(kind, count=2):
        assert sample.image.dtype == np.uint8
        assert sample.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert sample.image.std() > 1  # a textured surface, not a flat fill


def test_ok_has_no_defect_mask() -> None:
    for sample in _rendered("ok"):
        assert sample.label == CLASSES.index("ok")
        assert not any(mask.any() for mask in sample.masks.values())


@pytest.mark.parametrize("kind", ["scratch", "dent"])
def test_defect_has_a_nonempty_mask(kind: str) -> None:
    for sample in _rendered(kind):
        assert sample.label == CLASSES.index(kind)
        assert set(sample.masks) == {kind}
        mask = sample.masks[kind]
        assert mask.dtype == bool and mask.shape == (IMAGE_SIZE, IMAGE_SIZE)
        assert 10 < mask.sum() < 0.1 * mask.size


def test_scratch_and_dent_masks_are_disjoint() -> None:
    for sample in _rendered("scratch+dent", count=10):
        assert sample.label == MIXED_LABEL
        scratch, dent = sample.masks["scratch"], sample.masks["dent"]
        assert scratch.any() and dent.any()
        assert not (scratch & dent).any()


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError):
        render("crack", np.random.default_rng(0))


def test_preprocessing_is_the_same_for_arrays_and_pil_images() -> None:
    images = [sample.image for sample in make_dataset(3, seed=6)]
    batch = to_tensor(images)
    assert batch.shape == (3, 3, INPUT_SIZE, INPUT_SIZE) and batch.dtype == torch.float32
    torch.testing.assert_close(batch[0], preprocess(Image.fromarray(images[0])))
    assert abs(batch.mean().item()) < 1.0 and 0.3 < batch.std().item() < 3.0  # roughly standardised


def test_target_layer_is_at_least_14x14() -> None:
    model = InspectionNet().eval()
    with torch.no_grad():
        features = model.features(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
    assert features.ndim == 4 and min(features.shape[2:]) >= 14
    assert isinstance(model.features[-1], torch.nn.ReLU)


@pytest.fixture(scope="module")
def trained() -> InspectionNet:
    model = InspectionNet()
    model.load_state_dict(torch.load(WEIGHTS_FILE, weights_only=True))
    return model.eval()


def test_weights_are_small_and_match_the_report() -> None:
    assert WEIGHTS_FILE.stat().st_size < 1_000_000
    report = json.loads(WEIGHTS_FILE.with_suffix(".json").read_text())
    assert report["weights_sha256"] == hashlib.sha256(WEIGHTS_FILE.read_bytes()).hexdigest()
    assert report["classes"] == list(CLASSES)
    assert HELD_OUT_SEED not in (report["train_seed"], report["test_seed"])


def test_committed_weights_classify_a_held_out_set(trained: InspectionNet) -> None:
    samples = make_dataset(300, seed=HELD_OUT_SEED)
    labels = torch.tensor([sample.label for sample in samples])
    with torch.no_grad():
        predicted = torch.cat([trained(chunk).argmax(1) for chunk in to_tensor([s.image for s in samples]).split(100)])
    accuracy = (predicted == labels).float().mean().item()
    assert accuracy >= 0.97, f"held-out accuracy {accuracy:.3f}"
