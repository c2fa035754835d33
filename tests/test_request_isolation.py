"""No request can fail its batch: whatever one request raises, at any step, is its own answer.

Driven through the handler with TorchServe's real Context, batch by batch like a worker.
"""

from __future__ import annotations

import base64
import copy

import pytest

from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import run_batch
from handlers.testing.images import image_bytes
from handlers.testing.mars import LABELS, custom_context

NESTED_JSON = b"[" * 100_000 + b"]" * 100_000  # TorchServe's json.loads gives up and forwards the bytes


@pytest.fixture(scope="module")
def tiny_context(tmp_path_factory):
    return custom_context(tmp_path_factory.mktemp("isolation"))


def handler_with(context, **limits) -> GradCamHandler:
    """A handler on a copy of ``context`` whose ``gradcam:`` section has ``limits`` changed."""
    context = copy.copy(context)
    context.model_yaml_config = copy.deepcopy(context.model_yaml_config)
    context.model_yaml_config["gradcam"].update(limits)
    handler = GradCamHandler()
    handler.initialize(context)
    return handler


@pytest.fixture(scope="module")
def handler(tiny_context) -> GradCamHandler:
    return handler_with(tiny_context)


def good_row(seed: int = 1) -> dict:
    return {"body": bytearray(image_bytes(seed))}


@pytest.mark.parametrize(
    "bad_row,hint",
    [
        ({"body": {"data": base64.b64encode(image_bytes(2)).decode(), "target": "9" * 5000}}, "not a class label"),
        ({"body": {"data": base64.b64encode(image_bytes(2)).decode(), "target": "²"}}, "not a class label"),
        ({"body": {"data": base64.b64encode(image_bytes(2)).decode(), "top_k": "²"}}, "top_k"),
        ({"body": {"data": base64.b64encode(image_bytes(2)).decode(), "top_k": "1" * 5000}}, "top_k"),
        ({"body": bytearray(NESTED_JSON)}, "nested too deeply"),
        ({"body": {"data": base64.b64encode(image_bytes(2)).decode(), "target": list(range(10_000))}}, "at most"),
        ({"body": {"data": base64.b64encode(image_bytes(2)).decode(), "method": "x" * 100_000}}, "method"),
    ],
)
def test_a_hostile_request_gets_its_own_400_and_the_batch_is_answered(handler, bad_row, hint):
    rows = [good_row(1), bad_row, good_row(3)]
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200, 400, 200]
    assert hint in bodies[1]["error"] and len(bodies[1]["error"]) < 600  # never echoes the upload back
    assert all(bodies[i]["predictions"][0]["label"] in LABELS for i in (0, 2))


def test_an_unexpected_failure_while_reading_is_that_requests_400(handler, monkeypatch):
    def broken_view(image):
        raise ArithmeticError("a bug or a library failure on this one image")

    rows = [good_row(1), {"body": bytearray(image_bytes(2, size=(41, 30)))}, good_row(3)]
    original = handler.preprocessor.view
    monkeypatch.setattr(handler.preprocessor, "view", lambda im: broken_view(im) if im.width == 41 else original(im))
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200, 400, 200]
    assert "ArithmeticError" in bodies[1]["error"]


def test_a_failing_engine_call_is_retried_per_request_and_only_the_culprit_fails(handler, monkeypatch):
    original = handler.explainer.explain
    calls = []

    def fails_with_the_bird_target(images, jobs):
        calls.append(len(jobs))
        if any(job.targets == (2,) for job in jobs):
            raise RuntimeError("the engine failed on this sample")
        return original(images, jobs)

    monkeypatch.setattr(handler.explainer, "explain", fails_with_the_bird_target)
    bird = {"body": {"data": base64.b64encode(image_bytes(2)).decode(), "target": "bird"}}
    statuses, bodies, _ = run_batch(handler, [good_row(1), bird, good_row(3)])
    assert statuses == [200, 500, 200]
    assert calls == [3, 1, 1, 1]
    assert "RuntimeError" in bodies[1]["error"] and bodies[0]["explanations"] and bodies[2]["explanations"]


def test_a_failing_answer_is_that_requests_500(handler, monkeypatch):
    import handlers.serving.handler as glue

    original = glue.answer

    def fails_for_png(result, options, *args):
        if options.format == "png":
            raise ValueError("renderer failure")
        return original(result, options, *args)

    monkeypatch.setattr(glue, "answer", fails_for_png)
    png = {"body": {"data": base64.b64encode(image_bytes(2)).decode(), "format": "png"}}
    statuses, bodies, _ = run_batch(handler, [good_row(1), png])
    assert statuses == [200, 500] and "renderer failure" in bodies[1]["error"]


def test_an_answer_over_the_response_limit_is_refused_with_what_to_ask_instead(tiny_context):
    handler = handler_with(tiny_context, max_response_bytes=8_000)
    raw = {"body": {"data": base64.b64encode(image_bytes(2)).decode(), "format": "raw", "size": "input"}}
    statuses, bodies, _ = run_batch(handler, [good_row(1), raw, good_row(3)])
    assert statuses == [200, 400, 200]
    message = bodies[1]["error"]
    assert "max_response_bytes" in message and "8000" in message
    assert "format=grid" in message and "size=feature" in message


def test_top_k_is_capped_by_the_model_config(tiny_context):
    defaults = {**tiny_context.model_yaml_config["gradcam"]["defaults"], "top_k": 1}
    handler = handler_with(tiny_context, max_top_k=2, defaults=defaults)
    rows = [{"body": {"data": base64.b64encode(image_bytes(2)).decode(), "top_k": k}} for k in (2, 3)]
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200, 400]
    assert len(bodies[0]["predictions"]) == 2 and "from 1 to 2" in bodies[1]["error"]
    with pytest.raises(ValueError, match="'top_k' must be from 1 to 2, got 3"):  # a default over the cap
        handler_with(tiny_context, max_top_k=2)


def test_every_usual_way_of_sending_an_image_works(handler):
    data = image_bytes(2)
    text = base64.b64encode(data)
    rows = [
        {"body": bytearray(data)},  # curl -T image.png
        {"body": bytearray(text + b"\n")},  # curl -T image.b64
        {"data": bytearray(text)},  # curl -F data=@image.b64
        {"data": text.decode().replace("+", " ")},  # curl -d "data=..." unescaped: '+' arrives as ' '
        {"body": "data:image/png;base64," + text.decode()},  # a data URL as text/plain
    ]
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200] * len(rows)
    assert len({str(body["predictions"]) for body in bodies}) == 1


def test_an_image_sent_as_a_urlencoded_form_gets_a_415_that_says_what_to_change(handler):
    garbage_fields = {"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR": b"\x00\x01", "x\x9c": b""}
    headers = [{}, {"Content-Type": "application/x-www-form-urlencoded"}]
    statuses, bodies, _ = run_batch(handler, [good_row(1), garbage_fields], headers)
    assert statuses == [200, 415]
    assert "urlencoded" in bodies[1]["error"] and "curl -T" in bodies[1]["error"]


def test_the_models_jpeg_scan_limit_is_applied_per_request(tiny_context):
    handler = handler_with(tiny_context, max_jpeg_scans=3)
    progressive = {"body": bytearray(image_bytes(2, size=(64, 48), fmt="JPEG", progressive=True))}
    baseline = {"body": bytearray(image_bytes(3, size=(64, 48), fmt="JPEG"))}
    statuses, bodies, _ = run_batch(handler, [progressive, baseline])
    assert statuses == [422, 200]
    assert "scans" in bodies[0]["error"] and "3" in bodies[0]["error"]
