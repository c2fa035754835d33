"""Every method of the registry served through the handler: same API, batching, targets, errors."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from handlers.engine import METHODS
from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import load_context, run_batch, unpack_mar
from handlers.testing.images import image_bytes
from handlers.testing.mars import LABELS, SIDE, build_custom_mar, custom_context

# The tiny net with a non-linear head: no CAM shortcut, so 'cam' must be refused.
TANH_HEAD_NET = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.tanh(self.features(x).mean((2, 3))))
"""


@pytest.fixture(scope="module")
def handler(tmp_path_factory) -> GradCamHandler:
    handler = GradCamHandler()
    handler.initialize(custom_context(tmp_path_factory.mktemp("methods")))
    return handler


def handler_of(directory, source: str) -> GradCamHandler:
    """A handler loaded from a MAR of the ``TinyNet`` in ``source`` (seeded random weights)."""
    handler = GradCamHandler()
    mar = build_custom_mar(directory, source=source)
    handler.initialize(load_context(unpack_mar(mar, directory / "model"), "tiny"))
    return handler


def request(method: str, **fields) -> dict:
    return {"body": {"data": base64.b64encode(image_bytes(3)).decode(), "method": method, **fields}}


def test_every_method_answers_in_one_batch_with_the_same_prediction(handler):
    names = [name for name in METHODS if name != "none"]
    rows = [request("none"), *(request(name) for name in names)]
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200] * len(rows)
    for name, body in zip(names, bodies[1:], strict=True):
        assert body["predictions"] == bodies[0]["predictions"], name
        method = METHODS[name]
        explanations = body["explanations"]
        assert explanations and all(e["method"] == name for e in explanations), name
        first = explanations[0]
        assert first["class_specific"] == method.class_specific and first["resolution"] == method.resolution
        side = SIDE if method.resolution == "input" else SIDE // 2
        assert first["shape"] == [side, side], name
        heatmap = np.array(first["heatmap"])
        assert heatmap.min() >= 0 and heatmap.max() <= 1, name
        if method.class_specific:
            assert first["target"]["index"] == body["predictions"][0]["index"], name
        else:
            assert first["target"] is None, name
        assert (first["layer"] is None) == (not method.uses_layer), name


def test_activations_show_the_most_active_channels_or_one(handler):
    rows = [
        request("activations", channels=4),
        request("activations", channel=7),
        request("activations", layer="features.0"),
    ]
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200, 200, 200]
    top = bodies[0]["explanations"]
    means = [e["mean"] for e in top]
    assert len(top) == 4 and means == sorted(means, reverse=True)
    assert all(e["max"] >= e["mean"] and e["target"] is None for e in top)
    assert [e["channel"] for e in bodies[1]["explanations"]] == [7]
    assert {e["layer"] for e in bodies[2]["explanations"]} == {"features.0"}
    assert bodies[2]["explanations"][0]["shape"] == [SIDE, SIDE]


def test_activation_tiles_are_one_mosaic(handler):
    statuses, bodies, _ = run_batch(handler, [request("activations", channels=6, format="tiles")])
    assert statuses == [200]
    (entry,) = bodies[0]["explanations"]
    assert entry["format"] == "tiles" and entry["grid"] == [2, 3] and len(entry["channels"]) == 6
    mosaic = Image.open(io.BytesIO(base64.b64decode(entry["png"])))
    height, width = entry["tile_shape"]
    assert mosaic.mode == "L" and mosaic.size == (3 * width + 2, 2 * height + 1)


@pytest.mark.parametrize(
    ("fields", "hint"),
    [
        ({"method": "eigencam", "target": "dog"}, "not class-specific"),
        ({"method": "activations", "target": 1}, "not class-specific"),
        ({"method": "activations", "layer": "fc"}, "not a layer with a channels-first map"),
        ({"method": "activations", "channel": 16}, "outside 0..15"),
        ({"method": "gradcam", "window": 4}, "applies to method occlusion only"),
        ({"method": "occlusion", "window": 1, "stride": 1, "target": "cat,dog"}, "max_occlusion_forwards"),
        ({"method": "occlusion", "window": 99}, "from 1 to 32"),
        ({"method": "integrated_gradients", "steps": 65}, "max_ig_steps"),
        ({"method": "gradcam", "format": "tiles"}, "for method 'activations' only"),
    ],
)
def test_method_parameters_are_checked_per_request(handler, fields, hint):
    rows = [request("gradcam"), request(**fields)]
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200, 400], bodies[1]
    assert hint in bodies[1]["error"]


def test_cam_needs_a_pool_linear_head_and_says_to_use_gradcam(tmp_path):
    handler = handler_of(tmp_path, TANH_HEAD_NET)
    statuses, bodies, _ = run_batch(handler, [request("cam"), request("hirescam")])
    assert statuses == [400, 200]
    assert "use 'gradcam'" in bodies[0]["error"]
    assert "cam" not in [m["name"] for m in handler.description()["methods"]]


def test_the_description_lists_methods_labels_layers_and_limits(handler):
    statuses, bodies, _ = run_batch(handler, [{"body": b""}], [{"describe": "True"}])
    assert statuses == [200]
    description = bodies[0]
    assert description == handler.description()
    assert [m["name"] for m in description["methods"]] == list(METHODS)
    assert description["labels"] == LABELS and description["target_layer"] == "features"
    assert description["layers"][0] == "features" and description["limits"]["max_ig_steps"] >= 1
    occlusion = next(m for m in description["methods"] if m["name"] == "occlusion")
    assert occlusion["options"] == ["window", "stride"] and occlusion["class_specific"] is True


def test_a_describe_header_on_one_request_does_not_cost_its_batch(handler):
    """TorchServe passes client headers on: a request sent with 'describe: True' among others gets the
    description, and the rest of its batch their own answers (one answer per request, or all 503)."""
    rows = [request("gradcam"), request("gradcam"), request("none")]
    statuses, bodies, _ = run_batch(handler, rows, [{"describe": "True"}, {}, {}])
    assert statuses == [200, 200, 200]
    assert bodies[0] == handler.description()
    assert bodies[1]["explanations"] and bodies[2]["predictions"] and not bodies[2]["explanations"]


GELU_NET = TANH_HEAD_NET.replace("nn.ReLU()", "nn.GELU()")


def test_guided_answers_on_a_gelu_model_say_what_the_map_is(tmp_path):
    handler = handler_of(tmp_path, GELU_NET)
    statuses, bodies, _ = run_batch(handler, [request("guided_gradcam"), request("gradcam")])
    assert statuses == [200, 200]
    note = bodies[0]["explanations"][0]["note"]
    assert "2 gelu" in note and "gradient x Grad-CAM" in note
    assert "note" not in bodies[1]["explanations"][0]
    assert handler.description()["guided_note"] == note


def test_guided_answers_on_an_all_relu_model_carry_no_note(handler):
    statuses, bodies, _ = run_batch(handler, [request("guided_backprop")])
    assert statuses == [200] and "note" not in bodies[0]["explanations"][0]
    assert handler.description()["guided_note"] is None
