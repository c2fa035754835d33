"""KServe v1 and v2 requests through the handler, mixed in one batch with plain requests.

Each KServe answer must equal what the plain API answers for the same image and options:
the protocol changes the shape of the request and answer, never the explanation.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from ts.torch_handler.request_envelope.kserve import KServeEnvelope

from decode_bombs import scan_bomb
from handlers.serving import kserve
from handlers.serving.decode import DecodeLimits
from handlers.serving.handler import GradCamHandler
from handlers.serving.kserve import unfold
from handlers.testing.fakes import load_context, run_batch, unpack_mar, with_requests
from handlers.testing.images import image_bytes
from handlers.testing.mars import build_custom_mar


@pytest.fixture(scope="module")
def handler(tmp_path_factory) -> GradCamHandler:
    work = tmp_path_factory.mktemp("tiny")
    model_dir: Path = unpack_mar(build_custom_mar(work), work / "model")
    handler = GradCamHandler()
    handler.initialize(load_context(model_dir, "tiny"))
    return handler


GUIDED = "guided_gradcam"
ZERO_TOP_K = {"top_k": 0}


def b64(seed: int) -> str:
    return base64.b64encode(image_bytes(seed)).decode()


def plain(handler, seed: int, explain: bool = False, **options) -> dict:
    """The plain API's answer for one image and its options, alone in its batch."""
    statuses, bodies, _ = run_batch(handler, [{"body": {"data": b64(seed), **options}}], [{"explain": str(explain)}])
    assert statuses == [200]
    return bodies[0]


def test_v1_and_v2_in_one_batch_with_plain_requests(handler):
    rows = [
        {"body": bytearray(image_bytes(1))},
        {"body": {"instances": [{"data": b64(2), "target": "dog"}, {"b64": b64(3), "method": GUIDED}, b64(4)]}},
        {
            "body": json.dumps(
                {
                    "id": "req-v2",
                    "model_name": "tiny",  # KServe's own client (InferRequest.to_rest) sends it
                    "inputs": [
                        {
                            "name": "images",
                            "datatype": "BYTES",
                            "shape": [2],
                            "data": [b64(5), b64(6)],
                            "parameters": {"target": "bird"},
                        }
                    ],
                    "parameters": {"method": "hirescam", "top_k": 2},
                }
            ).encode()
        },
        {"body": {"instances": [{"data": {"b64": b64(7)}, "format": "png"}]}},
    ]
    statuses, bodies, context = run_batch(handler, rows, [{"explain": "False"}] * 4)
    assert statuses == [200, 200, 200, 200]
    assert all(context.get_response_content_type(i) == "application/json" for i in range(4))
    assert bodies[0] == plain(handler, 1)
    assert bodies[1] == {
        "predictions": [plain(handler, 2, target="dog"), plain(handler, 3, method=GUIDED), plain(handler, 4)]
    }
    v2 = bodies[2]
    assert v2["model_name"] == "tiny" and v2["id"] == "req-v2"
    for output in v2["outputs"]:
        assert output["datatype"] == "BYTES" and output["shape"] == [2]
    for k, seed in enumerate((5, 6)):
        expected = plain(handler, seed, method="hirescam", top_k=2, target="bird")
        assert {output["name"]: json.loads(output["data"][k]) for output in v2["outputs"]} == expected
    assert bodies[3] == {"predictions": [plain(handler, 7, format="png")]}


def test_a_many_image_request_reaches_the_engine_one_batch_at_a_time(handler, monkeypatch):
    """64 images in one KServe request cost the memory of one batch, not 64 images at once (8x the
    activations: +720 MB on resnet50 at batch size 8); the answers are those of the images sent alone."""
    sizes: list[int] = []
    explain = handler.explainer.explain

    def recorded(images, jobs):
        sizes.append(len(jobs))
        return explain(images, jobs)

    monkeypatch.setattr(handler.explainer, "explain", recorded)
    count = 2 * handler.engine_batch + 1
    statuses, bodies, _ = run_batch(handler, [{"body": {"instances": [b64(seed) for seed in range(count)]}}])
    assert statuses == [200] and sizes == [handler.engine_batch, handler.engine_batch, 1]
    assert bodies[0]["predictions"][-1] == plain(handler, count - 1)


def test_explain_endpoint_answers_v1_with_explanations(handler):
    rows = [{"body": {"instances": [b64(8)]}}, {"body": {"instances": [b64(8)]}}]
    _, bodies, _ = run_batch(handler, rows, [{"explain": "True"}, {"explain": "False"}])
    assert bodies[0] == {"explanations": [plain(handler, 8, explain=True)]}
    assert bodies[1] == {"predictions": [plain(handler, 8)]}


def test_v2_request_without_id_gets_torchserves_request_id(handler):
    body = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 1], "data": [[b64(9)]]}]}
    statuses, bodies, _ = run_batch(handler, [{"body": body}])
    assert statuses == [200] and bodies[0]["id"] == "req-0"
    assert json.loads(bodies[0]["outputs"][0]["data"][0]) == plain(handler, 9)["predictions"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"instances": [b64(1), {"data": b64(2), "method": "lime"}]}, 400, "instance 1: option 'method'"),
        ({"instances": [b64(1), {"data": base64.b64encode(b"no image").decode()}]}, 415, "instance 1:"),
        ({"instances": []}, 400, "no image"),
        ({"instances": "abc"}, 400, "'instances' must be a list"),
        ({"instances": [b64(1)], "signature_name": "x"}, 400, "unknown field 'signature_name'"),
        ({"instances": [b64(1)] * 65}, 400, "at most 64"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.5]}]}, 400, "datatype BYTES"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "data": [b64(1)]}]}, 400, "shape [2]"),
        (
            {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [b64(1)]}], "parameters": ZERO_TOP_K},
            400,
            "element 0 of input 'x': option 'top_k'",
        ),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [7]}]}, 400, "base64 string"),
    ],
)
def test_a_bad_kserve_request_fails_alone_in_the_protocols_error_shape(handler, body, status, message):
    rows = [{"body": body}, {"body": {"instances": [b64(3)]}}, {"body": bytearray(image_bytes(4))}]
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [status, 200, 200]
    assert set(bodies[0]) == {"error"} and message in bodies[0]["error"]
    assert bodies[1] == {"predictions": [plain(handler, 3)]}
    assert bodies[2] == plain(handler, 4)


def test_plain_batches_are_not_unfolded(handler):
    rows: list[dict[str, Any]] = [
        {"body": bytearray(image_bytes(1))},
        {"body": {"data": b64(2)}},
        {"data": bytearray(image_bytes(3))},
    ]
    batch = unfold(rows, handler.context)
    assert batch.rows == rows and batch.context is handler.context and not batch.unfolded


def test_torchserves_envelope_in_front_is_named_in_the_log(handler, caplog, monkeypatch):
    """With service_envelope on, TorchServe's KServe envelope calls the handler: say what to change."""
    monkeypatch.setattr(kserve, "_envelope_warned", False)
    context = with_requests(handler.context, [{"explain": "False"}])
    with caplog.at_level("ERROR", logger="handlers.serving.kserve"):
        KServeEnvelope(handler.handle).handle([{"body": {"instances": [b64(1)]}}], context)
        run_batch(handler, [{"body": {"instances": [b64(1)]}}])  # called by TorchServe directly: no warning
    (record,) = [r for r in caplog.records if "service envelope is on" in r.getMessage()]
    assert "enable_envvars_config" in record.getMessage()


def test_the_images_of_one_kserve_request_share_a_batchs_decode_time(handler, monkeypatch):
    """Each image has the decode limit, but a request of many slow images gets no more than a batch of plain
    requests would (batchSize x the limit): the rest get 503, and the batch's plain requests are answered."""
    monkeypatch.setattr(handler, "decode_limits", DecodeLimits(max_jpeg_scans=10**6, timeout_s=0.2))
    bomb = base64.b64encode(scan_bomb(1000, 1000, 30_000)).decode()  # each one stopped at its 0.2 s
    count = 3 * handler.engine_batch  # decoded two at a time: 1.5 x the request's shared time if let run
    rows: list[dict[str, Any]] = [{"body": {"instances": [bomb] * count}}, {"body": bytearray(image_bytes(4))}]
    real = with_requests(handler.context, [{}, {}])
    batch = unfold(rows, real)
    handler.context = batch.context  # as handle() sets it for the unfolded rows
    try:
        prepared = handler.preprocess(batch.rows)
    finally:
        handler.context = real
    statuses = [getattr(item, "status", 200) for item in prepared]
    assert statuses[0] == 422 and statuses[-2] == 503 and set(statuses[:-1]) <= {422, 503}  # the request's
    assert "to decode together" in prepared[-2].message and statuses[-1] == 200  # the plain batch-mate
