"""Cost control: explain only the predictions a policy selects, the rest at prediction cost."""

from __future__ import annotations

import base64

import pytest
import torch
from torch import nn

from handlers.engine import Explainer, Job
from handlers.engine.policy import ExplainPolicy, draw
from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import load_context, run_batch, unpack_mar
from handlers.testing.images import image_bytes
from handlers.testing.mars import build_custom_mar


def test_rules_combine_with_or_and_the_first_that_fires_is_the_reason():
    policy = ExplainPolicy(below=0.8, rate=0.5, classes=frozenset({2}))
    assert policy.decide(2, 0.9, 0.99).reason == "class"  # class before confidence
    assert policy.decide(0, 0.6, 0.99).reason == "uncertain"
    assert policy.decide(0, 0.9, 0.1).reason == "sampled"
    skipped = policy.decide(0, 0.9, 0.7)
    assert not skipped.explained and skipped.reason == "confident"
    assert ExplainPolicy(rate=0.5).decide(0, 0.9, 0.7).reason == "not_sampled"
    assert ExplainPolicy(classes=frozenset({1})).decide(0, 0.9, 0.0).reason == "other_class"
    assert ExplainPolicy(rate=1.0).decide(0, 0.99, 0.999).explained  # rate 1: all
    assert not ExplainPolicy(below=0.0).decide(0, 0.4, 0.0).explained  # below 0: none


def test_sampling_draw_is_reproducible_and_uniform():
    assert draw("request-17") == draw("request-17") != draw("request-18")
    draws = [draw(f"image-{i}") for i in range(20_000)]
    assert all(0 <= d < 1 for d in draws)
    assert abs(sum(d < 0.1 for d in draws) / len(draws) - 0.1) < 0.01


class Counting(nn.Module):
    """A model wrapper that records the batch size and grad mode of every forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((len(x), torch.is_grad_enabled()))
        return self.model(x)


@pytest.mark.parametrize("method", ["gradcam", "guided_gradcam", "eigencam", "occlusion"])
def test_skipped_rows_get_the_prediction_and_selected_rows_the_same_maps(random_model, method):
    explainer = Explainer(random_model("resnet18"), (64, 64))
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    keys = [f"k{i}" for i in range(6)]
    policy = ExplainPolicy(rate=0.5)
    picked = [draw(key) < 0.5 for key in keys]
    assert 0 < sum(picked) < 6  # the keys give a mix
    everything = explainer.explain(images, [Job(method) for _ in keys])
    policed = explainer.explain(images, [Job(method, policy=policy, sample_key=key) for key in keys])
    for full, part, chosen in zip(everything, policed, picked, strict=True):
        assert part.decision is not None and part.decision.explained == chosen
        torch.testing.assert_close(part.probabilities, full.probabilities, atol=1e-5, rtol=0)
        assert len(part.explanations) == (len(full.explanations) if chosen else 0)
        for a, b in zip(full.explanations if chosen else [], part.explanations, strict=True):
            assert a.target == b.target
            torch.testing.assert_close(b.values, a.values, atol=1e-5, rtol=1e-4)


def test_skipped_rows_cost_no_gradient_pass(random_model):
    """Guided Grad-CAM (a backward through the whole network): the policy predicts every row in
    inference mode, then runs the method, with gradients, on the selected rows only."""
    model = Counting(random_model("resnet18"))
    explainer = Explainer(model, (64, 64))
    images = torch.rand(8, 3, 64, 64)
    model.calls.clear()
    explainer.explain(images, [Job("guided_gradcam", policy=ExplainPolicy(below=0.0)) for _ in range(8)])
    assert model.calls == [(8, False)]  # nothing selected: one plain prediction forward
    model.calls.clear()
    classes = frozenset(range(1000))
    jobs = [Job("guided_gradcam", policy=ExplainPolicy(classes=classes if i == 3 else frozenset())) for i in range(8)]
    explainer.explain(images, jobs)
    assert model.calls == [(8, False), (1, True)]  # the one selected row alone gets the gradient pass
    model.calls.clear()
    explainer.explain(images, [Job("gradcam", policy=ExplainPolicy(below=0.0)) for _ in range(8)])
    assert len(model.calls) == 1  # Grad-CAM decides inside its own single forward


@pytest.fixture(scope="module")
def policed_handler(tmp_path_factory) -> GradCamHandler:
    """A TinyNet MAR whose model config asks for a policy: explain below 0.99, or 'bird' always."""
    work = tmp_path_factory.mktemp("policed")
    mar = build_custom_mar(work, "--explain-below", "0.99", "--explain-classes", "bird")
    handler = GradCamHandler()
    handler.initialize(load_context(unpack_mar(mar, work / "model"), "tiny"))
    return handler


def test_model_policy_in_answers_and_per_request_overrides(policed_handler):
    image = base64.b64encode(image_bytes(1)).decode()
    rows = [
        {"body": {"data": image}},
        {"body": {"data": image, "explain_below": "0"}},  # the threshold off: only 'bird' explains
        {"body": {"data": image, "explain_rate": 1}},  # everything sampled
        {"body": {"data": image, "method": "none"}},
    ]
    statuses, bodies, context = run_batch(policed_handler, rows)
    assert statuses == [200] * 4
    top = bodies[0]["predictions"][0]
    assert bodies[0]["explained"] is (top["probability"] < 0.99 or top["label"] == "bird")
    assert bodies[1]["explained"] is (top["label"] == "bird")
    if top["label"] != "bird":
        assert bodies[1]["skipped_because"] == "confident" and bodies[1]["explanations"] == []
    assert bodies[2]["explained"] is True and len(bodies[2]["explanations"]) == 1
    assert bodies[2]["explained_because"] in ("class", "uncertain", "sampled")
    assert "explained" not in bodies[3] and bodies[3]["explanations"] == []
    recorded = context.metrics.values
    decisions = [value for name, value, _ in recorded if name == "ExplainDecisions"]  # added up per label set
    assert sum(decisions) == 3


def test_explanations_endpoint_ignores_the_models_policy(policed_handler):
    image = base64.b64encode(image_bytes(1)).decode()
    statuses, bodies, _ = run_batch(
        policed_handler,
        [{"body": {"data": image}}, {"body": {"data": image, "explain_below": 0}}],
        [{"explain": "True"}, {"explain": "True"}],
    )
    assert statuses == [200, 200]
    assert "explained" not in bodies[0] and len(bodies[0]["explanations"]) == 1
    assert "explained" in bodies[1]  # the request's own policy still applies


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"explain_below": "1.5"}, "option 'explain_below' must be a number from 0 to 1"),
        ({"explain_rate": "ten percent"}, "option 'explain_rate' must be a number from 0 to 1"),
        ({"explain_rate": True}, "option 'explain_rate' must be a number from 0 to 1"),
        ({"explain_classes": "zebra"}, "option 'explain_classes': 'zebra' is not a class label"),
        ({"explain_classes": "7"}, "option 'explain_classes': class index 7 is outside"),
        ({"explain_key": "x" * 201}, "option 'explain_key' must be a text of 1 to 200 characters"),
    ],
)
def test_bad_policy_options_are_that_requests_400(policed_handler, fields, message):
    image = base64.b64encode(image_bytes(1)).decode()
    statuses, bodies, _ = run_batch(policed_handler, [{"body": {"data": image, **fields}}, {"body": {"data": image}}])
    assert statuses == [400, 200]
    assert bodies[0]["error"].startswith(message)


def test_sampling_follows_the_explain_key(policed_handler):
    image = base64.b64encode(image_bytes(1)).decode()
    keys = [f"camera-{i}" for i in range(12)]
    rows = [{"body": {"data": image, "explain_below": 0, "explain_rate": 0.5, "explain_key": key}} for key in keys]
    statuses, bodies, _ = run_batch(policed_handler, rows)
    top = bodies[0]["predictions"][0]["label"]
    expected = [top == "bird" or draw(key) < 0.5 for key in keys]
    assert statuses == [200] * 12 and [b["explained"] for b in bodies] == expected
    assert 0 < sum(expected) < 12 or top == "bird"


def test_archive_refuses_a_bad_policy(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_custom_mar(tmp_path, "--explain-rate", "2", "--no-check")
    assert "--explain-rate" in capsys.readouterr().err
