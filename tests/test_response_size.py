"""Response sizes: small by default, and no option can exceed TorchServe's max_response_size."""

from __future__ import annotations

import base64
import itertools

import pytest

from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import load_context, unpack_mar, with_requests
from handlers.testing.images import image_bytes
from handlers.testing.mars import build_custom_mar

# A 224 px model with a 7x7 feature map (stride 32) and 10 classes, like an ImageNet CNN.
NET_224 = """
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 7, stride=4, padding=3), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=8, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))
"""
LABELS = [f"class_{i}" for i in range(10)]
TORCHSERVE_MAX_RESPONSE = 6_553_500  # TorchServe's default max_response_size


@pytest.fixture(scope="module")
def handler(tmp_path_factory) -> GradCamHandler:
    work = tmp_path_factory.mktemp("size")
    mar = build_custom_mar(work, "--resize", "256", source=NET_224, labels=LABELS, side=224)
    handler = GradCamHandler()
    handler.initialize(load_context(unpack_mar(mar, work / "model"), "tiny"))
    return handler


def answer_size(handler, fields: dict) -> int:
    image = base64.b64encode(image_bytes(9, size=(640, 480), fmt="JPEG")).decode()
    context = with_requests(handler.context, [{}])
    (body,) = handler.handle([{"body": {"data": image, **fields}}], context)
    assert context.get_response_status(0)[0] == 200
    return len(body)


def test_default_answer_is_under_2_kb(handler):
    assert answer_size(handler, {}) < 2048


@pytest.mark.parametrize(
    "method,fmt,size",
    itertools.product(["gradcam", "guided_gradcam"], ["grid", "png", "overlay", "raw"], ["feature", "input"]),
)
def test_no_option_reaches_max_response_size_even_with_the_most_targets(handler, method, fmt, size):
    most = handler.config.max_targets
    assert (
        answer_size(handler, {"method": method, "format": fmt, "size": size, "top_k_explanations": most})
        < TORCHSERVE_MAX_RESPONSE
    )
