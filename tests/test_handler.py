"""The TorchServe handler on a MAR built by our CLI, driven batch by batch like a worker."""

from __future__ import annotations

import base64
import gc
import io
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import load_context, run_batch, unpack_mar
from handlers.testing.images import image_bytes
from handlers.testing.mars import LABELS, SIDE, TINY_NET, build_custom_mar, custom_context


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("tiny")
    return unpack_mar(build_custom_mar(work), work / "model")


@pytest.fixture(scope="module")
def handler(model_dir) -> GradCamHandler:
    handler = GradCamHandler()
    handler.initialize(load_context(model_dir, "tiny"))
    return handler


def test_mixed_batch_answers_each_request_on_its_own(handler):
    good = image_bytes(1)
    rows = [
        {"body": bytearray(good)},
        {"body": bytearray(b"not an image")},
        {"body": {"data": base64.b64encode(good).decode(), "target": "bird", "method": "guided_gradcam"}},
        {"data": bytearray(good), "method": b"lime"},
        {"body": base64.b64encode(image_bytes(2, fmt="JPEG")).decode()},
    ]
    statuses, bodies, context = run_batch(handler, rows)
    assert statuses == [200, 415, 200, 400, 200]
    assert "not an image in a supported format" in bodies[1]["error"]
    assert "option 'method'" in bodies[3]["error"] and "gradcam" in bodies[3]["error"]
    for i in (0, 2, 4):
        assert context.get_response_content_type(i) == "application/json"
        predictions = bodies[i]["predictions"]
        assert [p["label"] for p in predictions] == [LABELS[p["index"]] for p in predictions]
        probabilities = [p["probability"] for p in predictions]
        assert probabilities == sorted(probabilities, reverse=True) and len(predictions) == 3
        assert abs(sum(probabilities) - 1) < 1e-3
    (gradcam,) = bodies[0]["explanations"]
    assert gradcam["method"] == "gradcam" and gradcam["layer"] == "features"
    assert gradcam["target"] == {
        "index": bodies[0]["predictions"][0]["index"],
        "label": bodies[0]["predictions"][0]["label"],
    }
    heatmap = np.array(gradcam["heatmap"])
    assert gradcam["shape"] == [SIDE // 2, SIDE // 2] == list(heatmap.shape)
    assert heatmap.min() >= 0 and heatmap.max() == 1.0
    (guided,) = bodies[2]["explanations"]
    assert guided["method"] == "guided_gradcam" and guided["target"] == {"index": 2, "label": "bird"}
    assert guided["shape"] == [SIDE, SIDE] and np.array(guided["heatmap"]).max() == 1.0


def test_a_batch_of_only_bad_requests_still_answers_each(handler):
    statuses, bodies, _ = run_batch(handler, [{"body": bytearray()}, {"body": {"nodata": 1}}])
    assert statuses == [400, 400]
    assert "empty image" in bodies[0]["error"] and "no 'data' field" in bodies[1]["error"]


def test_explain_header_is_read_per_request(handler):
    good = bytearray(image_bytes(3))
    parser = handler.option_parser
    parser._default_fields["method"] = "none"  # a model whose default is prediction only
    parser._memo.clear()  # options remembered under the other default
    try:
        statuses, bodies, _ = run_batch(
            handler, [{"body": good}, {"body": good}], [{"explain": "False"}, {"explain": "True"}]
        )
    finally:
        parser._default_fields["method"] = "gradcam"
        parser._memo.clear()
    assert statuses == [200, 200]
    assert bodies[0]["explanations"] == [] and bodies[1]["explanations"][0]["method"] == "gradcam"
    assert bodies[0]["predictions"] == bodies[1]["predictions"]


def test_options_from_headers_and_several_targets(handler):
    good = bytearray(image_bytes(4))
    headers = [{"X-Explain-Target": "dog,cat", "X-Explain-Top-K": "1"}, {"x-explain-top-k-explanations": "2"}]
    _, bodies, _ = run_batch(handler, [{"body": good}, {"body": good}], headers)
    assert [e["target"]["label"] for e in bodies[0]["explanations"]] == ["dog", "cat"]
    assert len(bodies[0]["predictions"]) == 1
    assert [e["target"]["index"] for e in bodies[1]["explanations"]] == [
        p["index"] for p in bodies[1]["predictions"][:2]
    ]


def test_formats(handler):
    good = bytearray(image_bytes(5))
    rows = [
        {"body": {"data": base64.b64encode(good).decode(), "format": fmt, "size": size}}
        for fmt, size in (("png", "feature"), ("overlay", "feature"), ("raw", "feature"), ("grid", "input"))
    ]
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200] * 4
    png = Image.open(io.BytesIO(base64.b64decode(bodies[0]["explanations"][0]["png"])))
    assert png.mode == "L" and png.size == (SIDE // 2, SIDE // 2)
    overlay = Image.open(io.BytesIO(base64.b64decode(bodies[1]["explanations"][0]["png"])))
    assert (
        overlay.mode == "RGB" and overlay.size == (SIDE, SIDE) and bodies[1]["explanations"][0]["shape"] == [SIDE, SIDE]
    )
    raw = bodies[2]["explanations"][0]
    assert raw["max"] == pytest.approx(np.max(raw["values"]), rel=1e-5) and raw["min"] >= 0 and "heatmap" not in raw
    assert np.array(bodies[3]["explanations"][0]["heatmap"]).shape == (SIDE, SIDE)


def test_default_response_is_small(handler):
    _, bodies, _ = run_batch(handler, [{"body": bytearray(image_bytes(6))}])
    assert len(json.dumps(bodies[0], separators=(",", ":"))) < 2048


def test_handler_reports_its_time(handler):
    _, _, context = run_batch(handler, [{"body": bytearray(image_bytes(7))}])
    assert any(name == "HandlerTime" and value > 0 for name, value, _ in context.metrics.times)


@pytest.mark.parametrize(
    ("flags", "logged"),
    [
        (
            ("--target-layer", "features.9"),
            [
                "model tiny failed to load: target layer 'features.9' does not exist",
                "candidates (last first): features",
            ],
        ),
        ((), ["'gradcam.torch_threads' must be a whole number >= 1, got 0"]),  # the CLI refuses it: edited YAML
    ],
)
def test_bad_model_config_fails_the_load_with_a_clear_log(tmp_path, caplog, flags, logged):
    context = custom_context(tmp_path, *flags)
    if not flags:
        context.model_yaml_config["gradcam"]["torch_threads"] = 0
    with caplog.at_level(logging.ERROR), pytest.raises(ValueError):
        GradCamHandler().initialize(context)
    for line in logged:
        assert line in caplog.text


@pytest.mark.parametrize(
    ("flag", "omp", "expected"),
    [
        ((), None, 1),  # TorchServe runs a worker per core: one thread each
        ((), "3", 3),  # the operator's OMP_NUM_THREADS is kept
        (("--torch-threads", "2"), "3", 2),  # the MAR's setting wins over both
    ],
)
def test_worker_torch_threads(tmp_path, monkeypatch, flag, omp, expected):
    context = custom_context(tmp_path, *flag)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # what torch itself read from OMP_NUM_THREADS at start-up, in a worker
    try:
        GradCamHandler().initialize(context)
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_workers_come_from_the_server_unless_the_mar_pins_them(tmp_path):
    def model_config(*flags: str) -> dict:
        return custom_context(tmp_path, *flags, unpack_to=f"model{len(flags)}").model_yaml_config

    assert "minWorkers" not in model_config()
    pinned = model_config("--workers", "2")
    assert pinned["minWorkers"] == pinned["maxWorkers"] == 2


def test_refused_requests_leave_no_reference_cycles(handler):
    """A refused request must not keep its frames (and decoder state) alive until a full
    garbage collection: that grew the worker by ~8 KB per request in a soak."""
    truncated = image_bytes(8)[:200]
    rows = [{"body": bytearray(truncated)}, {"body": bytearray(b"not an image")}, {"body": bytearray(image_bytes(9))}]
    run_batch(handler, rows)  # warm up lazy imports and caches
    gc.collect()
    gc.disable()
    try:
        statuses, _, _ = run_batch(handler, rows)
        assert statuses == [422, 415, 200]
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_large_uploads_of_a_batch_are_decoded_on_threads_with_the_same_answers(tmp_path, monkeypatch):
    """A batch with camera-size uploads is read on the decode threads (a batch of small ones on the
    worker's own); every answer, a refused one included, is what one-at-a-time decoding gives, in order."""
    import handlers.serving.handler as handler_module

    large = [image_bytes(seed, size=(600, 480), fmt="PNG") for seed in range(3)]
    assert min(len(data) for data in large) >= handler_module.PARALLEL_DECODE_BYTES
    rows: list[dict[str, object]] = [
        {"body": bytearray(large[0])},
        {"body": bytearray(image_bytes(7))},
        {"body": {"data": base64.b64encode(large[1]).decode(), "target": "bird"}},
        {"body": bytearray(large[2][: len(large[2]) // 2])},  # truncated: refused on its own
        {"body": bytearray(large[2])},
    ]
    threads: list[str] = []
    real_decode = handler_module.decode

    def recording_decode(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(handler_module, "decode", recording_decode)
    answers = {}
    for count in (1, 2):
        (tmp_path / str(count)).mkdir()
        handler = GradCamHandler()
        handler.initialize(custom_context(tmp_path / str(count), "--decode-threads", str(count)))
        threads.clear()
        answers[count] = run_batch(handler, [dict(row) for row in rows])[:2]
        assert [name.startswith("decode") for name in threads] == [count > 1] * len(rows), threads
        threads.clear()
        run_batch(handler, [{"body": bytearray(image_bytes(seed))} for seed in range(4)])
        assert not any(name.startswith("decode") for name in threads), threads
    assert answers[1] == answers[2]
    statuses, bodies = answers[2]
    assert statuses == [200, 200, 200, 422, 200]
    assert bodies[2]["explanations"][0]["target"]["label"] == "bird"


GRAY_NET = TINY_NET.replace("nn.Conv2d(3, 8", "nn.Conv2d(1, 8")


def test_a_grayscale_model_is_built_with_one_mean_and_std_and_explained_like_any(tmp_path, capsys):
    """A 1-channel model (an X-ray or line-scan classifier) sees each image's luminance; every method answers,
    and the overlay is drawn on the picture the model saw. Built with ImageNet's 3-value defaults it is refused
    with what to give instead."""
    with pytest.raises(SystemExit):  # refused: the CLI says why (exit 1) and writes no MAR
        build_custom_mar(tmp_path, source=GRAY_NET)
    assert "give --mean and --std one value each" in capsys.readouterr().err
    assert not (tmp_path / "tiny.mar").exists()
    mar = build_custom_mar(tmp_path, "--mean", "0.5", "--std", "0.25", source=GRAY_NET)
    handler = GradCamHandler()
    handler.initialize(load_context(unpack_mar(mar, tmp_path / "model"), "gray"))
    methods = ("gradcam", "guided_backprop", "occlusion", "integrated_gradients", "eigencam", "activations")
    rows = [{"data": bytearray(image_bytes(i)), "method": method.encode()} for i, method in enumerate(methods)]
    rows.append({"data": bytearray(image_bytes(9)), "format": b"overlay", "faithfulness": b"full"})
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200] * len(rows) and handler.explainer.channels == 1
    for body, method in zip(bodies, (*methods, "gradcam"), strict=True):
        assert body["explanations"][0]["method"] == method
    overlay = Image.open(io.BytesIO(base64.b64decode(bodies[-1]["explanations"][0]["png"])))
    assert overlay.mode == "RGB" and overlay.size == (SIDE, SIDE)
    assert bodies[-1]["explanations"][0]["faithfulness"]["deletion_auc"] is not None
