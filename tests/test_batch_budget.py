"""A batch's budget of forward passes: capped requests together must not outlast the response timeout."""

from __future__ import annotations

import pytest

from handlers.engine import Explainer, FaithfulnessParams, Job
from handlers.engine.methods import MethodParams
from handlers.engine.methods.captum_methods import occlusion_geometry
from handlers.serving.budget import admitted, seconds_per_row
from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import run_batch
from handlers.testing.images import image_bytes
from handlers.testing.mars import custom_context

BUDGET = 300
HEAVY = {"method": "occlusion", "window": "4", "stride": "2"}  # 15 x 15 windows on the 32 px input: 226 passes


@pytest.fixture(scope="module")
def tight(tmp_path_factory) -> GradCamHandler:
    handler = GradCamHandler()
    context = custom_context(tmp_path_factory.mktemp("budget"), "--max-batch-forwards", str(BUDGET))
    handler.initialize(context)
    return handler


def _request(seed: int, **options: str) -> dict:
    return {"data": bytearray(image_bytes(seed)), **{name: value.encode() for name, value in options.items()}}


def test_forward_rows_count_each_pass_of_a_method_and_its_faithfulness(tight):
    explainer: Explainer = tight.explainer
    occlusion = MethodParams(window=4, stride=2)
    windows = occlusion_geometry(explainer.input_size, occlusion)[2]
    assert windows == 15 * 15
    assert explainer.forward_rows(Job("occlusion", params=occlusion)) == 1 + windows
    assert explainer.forward_rows(Job("occlusion", (0, 2), params=occlusion)) == 1 + 2 * windows
    assert explainer.forward_rows(Job("integrated_gradients", (1,), params=MethodParams(steps=8))) == 1 + 3 * 8
    assert explainer.forward_rows(Job("guided_backprop", top_classes=2)) == 1 + 2 * 2  # a backward per target
    assert explainer.forward_rows(Job("eigencam")) == 1
    full = FaithfulnessParams(curves=True, steps=4)
    plain = explainer.forward_rows(Job("gradcam", top_classes=2))
    assert explainer.forward_rows(Job("gradcam", top_classes=2, faithfulness=full)) == plain + 2 * (1 + 2 * 3)
    drop = Job("gradcam", faithfulness=FaithfulnessParams())  # one forward of the explanation image
    assert explainer.forward_rows(drop) == explainer.forward_rows(Job("gradcam")) + 1


def test_a_request_that_no_longer_fits_its_batch_gets_503_and_the_rest_are_answered(tight):
    rows = [_request(1, **HEAVY), _request(2), _request(3, **HEAVY), _request(4), _request(5, method="guided_gradcam")]
    statuses, bodies, _ = run_batch(tight, rows)
    assert statuses == [200, 200, 503, 200, 200]
    assert "max_batch_forwards" in bodies[2]["error"] and "retry" in bodies[2]["error"]
    assert bodies[0]["explanations"][0]["method"] == "occlusion"
    for i in (1, 3):  # the same answers as alone
        _, (alone,), _ = run_batch(tight, [rows[i]])
        assert bodies[i] == alone
    statuses, _, _ = run_batch(tight, [rows[2]])  # the refused one fits a batch of its own
    assert statuses == [200]


def test_a_request_over_the_whole_budget_is_refused_with_400_naming_it(tight):
    over = _request(1, method="integrated_gradients", steps="50", target="cat,dog")  # 1 + 3 x 50 x 2 = 301
    statuses, bodies, _ = run_batch(tight, [over, _request(2)])
    assert statuses == [400, 200]
    assert "needs 301 forward passes" in bodies[0]["error"] and f"at most {BUDGET}" in bodies[0]["error"]
    assert "max_batch_forwards" in bodies[0]["error"]
    assert tight.description()["limits"]["max_batch_forwards"] == BUDGET


def test_admission_keeps_arrival_order_and_lets_cheap_requests_pass_a_refused_one():
    assert admitted([100, 150, 100, 1, 49], 300) == [True, True, False, True, True]
    assert admitted([], 10) == []
    assert admitted([5, 5], 10) == [True, True]


def test_the_default_budget_is_measured_against_the_response_timeout(tmp_path):
    budgets = {}
    for timeout in ("2", "120"):
        handler = GradCamHandler()
        handler.initialize(custom_context(tmp_path, "--response-timeout", timeout, unpack_to=f"model{timeout}"))
        budgets[timeout] = handler.description()["limits"]["max_batch_forwards"]
        per_row = seconds_per_row(handler.explainer)
        assert 0 < per_row < 2  # a forward of the 32 px tiny net: well under a second
    assert budgets["120"] > 10 * budgets["2"] >= 10  # half of 2 s still fits many forwards of the tiny net
