"""The same image gets the same answer whatever batch TorchServe puts it in (issue 15).

Measured per method: the image alone versus last in batches of 8 and 32 whose other images
ask for other targets. On CPU the differences are float rounding (at most 8e-7 measured on
the default model and ResNet-50 with one or two threads); the README documents 1e-5.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from handlers.engine import Explainer
from handlers.engine.methods import MethodParams
from handlers.evaluation.batch_invariance import composition_differences
from handlers.evaluation.data import default_model, held_out_images

BOUND = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_method_of_the_default_model_is_batch_invariant():
    explainer = Explainer(default_model(), (128, 128))
    params = MethodParams(window=32, stride=32, steps=4)  # few passes: occlusion and IG stay cheap
    differences = composition_differences(explainer, held_out_images(33, seed=11), explainer.methods, params)
    assert set(differences) == set(explainer.methods)
    assert max(differences.values()) <= BOUND, differences


def test_a_torchvision_model_is_batch_invariant_with_every_one_forward_method():
    torch.manual_seed(0)
    explainer = Explainer(torchvision.models.resnet18(num_classes=10).eval(), (64, 64))
    methods = [m for m in explainer.methods if m not in ("occlusion", "integrated_gradients")]
    images = torch.randn(33, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    differences = composition_differences(explainer, images, methods)
    assert max(differences.values()) <= BOUND, differences


def test_the_measure_sees_a_batch_dependent_model():
    """Batch norm left in training mode normalises with batch statistics: the measure must say so."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    explainer = Explainer(model, (64, 64))
    model.train()
    images = torch.randn(33, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    differences = composition_differences(explainer, images, ["gradcam"])
    assert differences["gradcam"] > 0.01
