"""Our Grad-CAM and Guided Grad-CAM equal independent implementations (Captum, pytorch-grad-cam).

Nine torchvision architectures with seeded random weights and the default model, one
image and a batch of 8 with a different target per image; see handlers/evaluation/agreement.py.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from handlers.engine import Explainer, Job
from handlers.evaluation.agreement import (
    SUBJECTS,
    Agreement,
    OutOfPlaceReLU,
    agreement,
    compare_maps,
    distinct_top_targets,
    pytorch_grad_cam_raw,
)

TOLERANCE = 1e-4  # largest |difference| of min-max normalised maps
# Models where some ReLU is functional (F.relu), which Captum's guided hooks miss.
GUIDED_NOT_COMPARABLE = {"googlenet", "densenet121"}


@functools.cache
def _agreement(subject: str) -> Agreement:
    return agreement(subject)


def test_every_required_architecture_is_covered():
    required = {
        "resnet50",
        "googlenet",
        "densenet121",
        "squeezenet1_1",
        "vgg16_bn",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "convnext_tiny",
        "regnet_y_400mf",
        "inspection",
    }
    assert required <= set(SUBJECTS)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_maps_equal_the_references_at_batch_1_and_8(subject):
    result = _agreement(subject)
    expected = {
        ("Captum LayerGradCam", 1),
        ("Captum LayerGradCam", 8),
        ("pytorch-grad-cam GradCAM", 1),
        ("pytorch-grad-cam GradCAM", 8),
    }
    if subject not in GUIDED_NOT_COMPARABLE:
        expected |= {("Captum GuidedGradCam", 1), ("Captum GuidedGradCam", 8)}
    assert {(c.reference, c.batch) for c in result.comparisons} == expected
    for comparison in result.comparisons:
        # Every map agrees in raw values; the normalised check covers the non-constant maps,
        # which must be nearly all of them for it to mean anything.
        assert comparison.max_relative_error <= TOLERANCE, comparison
        assert comparison.max_error <= TOLERANCE, comparison
        assert comparison.degenerate <= comparison.batch // 8, comparison
    assert min(result.map_size) >= 3


@pytest.mark.parametrize("subject", SUBJECTS)
def test_the_batch_uses_a_different_target_per_image(subject):
    targets = _agreement(subject).targets
    assert len(targets) == 8
    assert len(set(targets)) == (3 if subject == "inspection" else 8)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_guided_is_compared_exactly_where_all_relus_are_modules(subject):
    result = _agreement(subject)
    assert (result.guided_note is not None) == (subject in GUIDED_NOT_COMPARABLE)
    assert (result.relu_calls == 0) == (subject in ("efficientnet_b0", "convnext_tiny"))


def test_distinct_targets_cycle_when_there_are_fewer_classes_than_rows():
    logits = torch.tensor([[0.0, 2.0, 1.0]] * 5)
    assert distinct_top_targets(logits) == [1, 2, 0, 1, 2]


class InPlaceAfterLayer(nn.Module):
    """DenseNet's pattern: the target layer's output is overwritten by an in-place ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        out = F.relu(self.features(x), inplace=True)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def test_pytorch_grad_cam_aliasing_is_what_out_of_place_relu_removes():
    torch.manual_seed(0)
    model = InPlaceAfterLayer().eval()
    norm = model.features[1]
    assert isinstance(norm, nn.BatchNorm2d) and norm.bias is not None
    with torch.no_grad():  # negative activations, so ReLU(A) differs from A
        norm.bias.fill_(-0.2)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
        with OutOfPlaceReLU():
            assert torch.equal(model(x), logits)
    targets = [0, 1, 2, 3]
    explainer = Explainer(model, (16, 16), target_layer="features")
    results = explainer.explain(x, [Job("gradcam", (t,)) for t in targets])
    ours = torch.stack([r.explanations[0].values for r in results])
    fixed = compare_maps("pgc", "gradcam", ours, pytorch_grad_cam_raw(model, "features", x, targets))
    as_shipped = pytorch_grad_cam_raw(model, "features", x, targets, out_of_place=False)
    shipped = compare_maps("pgc", "gradcam", ours, as_shipped)
    assert fixed.max_error <= TOLERANCE
    assert shipped.max_error > 0.01
