"""The same image gets the same answer whatever batch TorchServe puts it in (issue 15).

Measured per method: the image alone versus last in batches of 8 and 32 whose other images
ask for other targets. On CPU the differences are float rounding (at most 8e-7 measured on
the default model and ResNet-50 with one or two threads); the README documents 1e-5.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from handlers.engine import Explainer, Job
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


class _TokensAfterBatchNorm(nn.Module):
    """A conv stem and batch norm whose map becomes tokens (EfficientFormer's ``Flat``), mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, 4)
        self.norm = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.stem(x)).flatten(2).transpose(1, 2)
        return self.head(tokens.mean(dim=1))


def test_one_image_gradients_through_a_batch_norm_are_right():
    # torch's CPU batch-norm backward is wrong for one image when the gradient reaching it is
    # channels-last with an odd batch stride (the token view leaves one): the engine lays it out first.
    torch.manual_seed(0)
    model = _TokensAfterBatchNorm().eval()
    norm = model.norm
    assert norm.running_var is not None and norm.running_mean is not None
    norm.running_var.uniform_(0.5, 2)
    norm.running_mean.normal_()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    exact = images.double().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model.double()(exact)[:, 1].sum(), exact)
    expected = gradient.abs().amax(dim=1)
    explainer = Explainer(model.float(), (32, 32))
    before_norm = Explainer(model, (32, 32), target_layer="stem")  # its head-only backward crosses the norm
    for explaining, method in ((explainer, "guided_backprop"), (explainer, "guided_gradcam"), (before_norm, "gradcam")):
        batched = explaining.explain(images, [Job(method, (1,))] * 3)
        for i, image in enumerate(images):
            alone = explaining.explain(image[None], [Job(method, (1,))])[0].explanations[0].values
            assert torch.allclose(alone, batched[i].explanations[0].values, atol=1e-5 * float(alone.max()))
            if method == "guided_backprop":  # no ReLU here: the plain gradient's max |value| over colours
                assert torch.allclose(alone.double(), expected[i], atol=1e-5 * float(expected[i].max()))
