"""The committed ViT (handlers/inspection/vit.py): weights, accuracy, its Grad-CAM layer and where it points.

The thresholds are docs/evaluation.md section 5's numbers (1000 single-defect images) less a
margin for this smaller set: the ViT classifies like the CNN, but its Grad-CAM maps point at
the defect only about half the time (the report says why), so the test pins that they stay
above a map without information, not that they reach the CNN's bar.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from handlers.engine import Explainer, TargetLayerError
from handlers.evaluation.data import TEST_SEED, held_out_samples
from handlers.evaluation.localisation import Localisation, localisation
from handlers.evaluation.transformer import patch_reach, sign_checks
from handlers.inspection import CLASSES, INPUT_SIZE
from handlers.inspection.synthetic import make_dataset, to_tensor
from handlers.inspection.train import TrainConfig, fit, make_deterministic
from handlers.inspection.vit import VIT_CONFIG, VIT_WEIGHTS_FILE, InspectionViT, build, load_vit

HELD_OUT_SEED = 2024  # as tests/test_inspection_model.py: never used by training
ACCURACY_MARGIN = 0.03
POINTING_AT_DEFAULT = 0.50  # section 5, Grad-CAM at blocks.3.norm1 (rounded down)
POINTING_MARGIN = 0.15  # 60 images: a binomial standard error of about 0.065
COUNTS = {"scratch": 30, "dent": 30, "scratch+dent": 10}  # localisation() scores both kinds of image


@pytest.fixture(scope="module")
def vit() -> InspectionViT:
    return load_vit()


@pytest.fixture(scope="module")
def outcome(vit: InspectionViT) -> Localisation:
    return localisation(vit, held_out_samples(COUNTS, TEST_SEED))


def test_weights_are_small_and_match_the_report() -> None:
    assert VIT_WEIGHTS_FILE.stat().st_size < 1_000_000
    report = json.loads(VIT_WEIGHTS_FILE.with_suffix(".json").read_text())
    assert report["weights_sha256"] == hashlib.sha256(VIT_WEIGHTS_FILE.read_bytes()).hexdigest()
    assert report["classes"] == list(CLASSES)
    assert HELD_OUT_SEED not in (report["train_seed"], report["test_seed"])


def test_committed_weights_classify_a_held_out_set_as_reported(vit: InspectionViT) -> None:
    reported = json.loads(VIT_WEIGHTS_FILE.with_suffix(".json").read_text())["test_accuracy"]
    samples = make_dataset(150, seed=HELD_OUT_SEED)
    labels = torch.tensor([sample.label for sample in samples])
    with torch.no_grad():
        predicted = vit(to_tensor([s.image for s in samples])).argmax(1)
    accuracy = (predicted == labels).float().mean().item()
    assert accuracy >= reported - ACCURACY_MARGIN, f"held-out accuracy {accuracy:.3f}, reported {reported:.3f}"


def test_default_layer_is_the_last_blocks_first_norm(vit: InspectionViT) -> None:
    explainer = Explainer(vit, (INPUT_SIZE, INPUT_SIZE))
    assert explainer.layer_name == f"blocks.{len(vit.blocks) - 1}.norm1"


@pytest.mark.parametrize("layer", ["blocks.3", "norm"])
def test_last_block_output_and_final_norm_give_zero_gradients_and_are_refused(vit: InspectionViT, layer: str) -> None:
    images = to_tensor([s.image for s in held_out_samples({"scratch": 2, "dent": 2}, TEST_SEED)])
    assert patch_reach(vit, dict(vit.named_modules())[layer], images, [1, 2, 1, 2]) == 0.0
    assert patch_reach(vit, dict(vit.named_modules())["blocks.3.norm1"], images, [1, 2, 1, 2]) > 0.0
    with pytest.raises(TargetLayerError, match="does not reach the prediction"):
        Explainer(vit, (INPUT_SIZE, INPUT_SIZE), target_layer=layer)


def test_gradcam_at_the_default_layer_points_at_the_defect_as_measured(outcome: Localisation) -> None:
    assert len(outcome.defects) == COUNTS["scratch"] + COUNTS["dent"]
    uniform = float(np.mean([d.region_share for d in outcome.defects]))
    assert outcome.pointing_rate >= POINTING_AT_DEFAULT - POINTING_MARGIN, f"{outcome.pointing_rate:.3f}"
    assert outcome.pointing_rate > uniform, (outcome.pointing_rate, uniform)


def test_dent_evidence_is_in_the_negative_part_of_the_signed_map(vit: InspectionViT) -> None:
    """Section 5's sign table: on dents Grad-CAM's ReLU drops the side of the signed map that is on the defect."""
    samples = held_out_samples({"dent": 20}, TEST_SEED)
    layer = dict(vit.named_modules())["blocks.3.norm1"]
    (dent,) = sign_checks(vit, layer, samples, ["dent"] * len(samples), (8, 8))
    assert dent.images == 20
    assert dent.negative >= 0.9 and dent.positive <= 0.4, dent


def _few_steps() -> dict[str, torch.Tensor]:
    config = TrainConfig(train_size=16, batch_size=8, epochs=1, lr=VIT_CONFIG.lr, weight_decay=VIT_CONFIG.weight_decay)
    make_deterministic(config.train_seed)
    samples = make_dataset(config.train_size, config.train_seed)
    model = build(len(CLASSES))
    fit(model, to_tensor([s.image for s in samples]), torch.tensor([s.label for s in samples]), config)
    return model.state_dict()


def test_training_is_deterministic() -> None:
    threads = torch.get_num_threads()
    try:
        first, second = _few_steps(), _few_steps()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["pos_embed"], InspectionViT().state_dict()["pos_embed"])  # it did train
