"""End to end: a real TorchServe answering predictions with explanations over HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from handlers.engine import METHODS, Explainer, Job
from handlers.inspection import CLASSES, INPUT_SIZE, WEIGHTS_FILE
from handlers.inspection.network import InspectionNet
from handlers.inspection.synthetic import preprocess

pytestmark = pytest.mark.integration

CONTRACT_KEYS = {"class_specific", "resolution", "method", "target", "layer", "shape", "heatmap", "format"}


def post(server, body, model="inspection", endpoint="predictions", **kwargs) -> requests.Response:
    return requests.post(f"{server.url()}/{endpoint}/{model}", data=body, timeout=60, **kwargs)


def check_contract(answer: dict, method: str = "gradcam") -> None:
    assert set(answer) == {"predictions", "explanations", "geometry"}
    assert set(answer["geometry"]) == {"original_size", "box"} and len(answer["geometry"]["box"]) == 4
    predictions = answer["predictions"]
    assert len(predictions) == 3 and {p["label"] for p in predictions} == set(CLASSES)
    assert [p["probability"] for p in predictions] == sorted((p["probability"] for p in predictions), reverse=True)
    for explanation in answer["explanations"]:
        assert set(explanation) == CONTRACT_KEYS and explanation["method"] == method
        heatmap = np.array(explanation["heatmap"])
        assert list(heatmap.shape) == explanation["shape"]
        assert heatmap.min() >= 0 and heatmap.max() <= 1
        assert CLASSES[explanation["target"]["index"]] == explanation["target"]["label"]


def test_raw_image_gets_prediction_and_gradcam(server, samples):
    answer = post(server, samples["scratch"])
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    check_contract(body)
    assert body["predictions"][0]["label"] == "scratch"
    (explanation,) = body["explanations"]
    assert explanation["layer"] == "features" and explanation["shape"] == [16, 16]
    assert explanation["target"] == {"index": 1, "label": "scratch"}


def test_explanations_endpoint_both_methods_and_targets(server, samples):
    both = samples["scratch+dent"]
    by_label = post(server, both, endpoint="explanations", headers={"X-Explain-Target": "dent"}).json()
    check_contract(by_label)
    assert by_label["explanations"][0]["target"] == {"index": 2, "label": "dent"}
    guided = post(
        server,
        json.dumps({"data": base64.b64encode(both).decode(), "method": "guided_gradcam", "target": 1}),
        endpoint="explanations",
        headers={"Content-Type": "application/json"},
    ).json()
    check_contract(guided, "guided_gradcam")
    assert guided["explanations"][0]["target"]["label"] == "scratch"
    assert guided["explanations"][0]["shape"] == [INPUT_SIZE, INPUT_SIZE]
    form = requests.post(
        f"{server.url()}/predictions/inspection", files={"data": both}, data={"target": "scratch,dent"}, timeout=60
    ).json()
    assert [e["target"]["label"] for e in form["explanations"]] == ["scratch", "dent"]


def test_concurrent_batch_with_an_undecodable_image(server, samples):
    """Eight concurrent requests form ONE batch; the bad one is refused, the rest answered."""
    requests_ = [
        (samples["scratch"], {}),
        (samples["dent"], {"X-Explain-Method": "guided_gradcam"}),
        (samples["ok"], {"X-Explain-Target": "ok"}),
        (b"\x89PNG\r\n\x1a\n truncated", {}),
        (samples["scratch+dent"], {"X-Explain-Target": "2"}),
        (samples["dent"], {"X-Explain-Method": "none"}),
        (samples["scratch"], {"X-Explain-Top-K-Explanations": "2"}),
        (samples["ok"], {"X-Explain-Method": "guided_gradcam", "X-Explain-Target": "dent"}),
    ]
    before = server.log().count("batch of 8:")
    with ThreadPoolExecutor(len(requests_)) as pool:
        answers = list(pool.map(lambda r: post(server, r[0], model="inspection_batched", headers=r[1]), requests_))
    assert server.log().count("batch of 8:") == before + 1, "the eight requests did not form one batch"
    assert [a.status_code for a in answers] == [200, 200, 200, 422, 200, 200, 200, 200]
    bodies = [a.json() for a in answers]
    assert "corrupt or truncated" in bodies[3]["error"]
    assert bodies[0]["explanations"][0]["target"]["label"] == "scratch"
    assert bodies[1]["explanations"][0]["method"] == "guided_gradcam" and bodies[1]["explanations"][0]["shape"] == [
        128,
        128,
    ]
    assert bodies[2]["explanations"][0]["target"]["label"] == "ok"
    assert bodies[4]["explanations"][0]["target"]["label"] == "dent"
    assert bodies[5]["explanations"] == [] and bodies[5]["predictions"][0]["label"] == "dent"
    assert len(bodies[6]["explanations"]) == 2
    assert bodies[7]["explanations"][0]["target"]["label"] == "dent"


def test_bad_options_are_400_for_that_request_only(server, samples):
    unknown = post(server, samples["ok"], headers={"X-Explain-Method": "lime"})
    assert unknown.status_code == 400
    assert unknown.json() == {"error": f"option 'method' must be one of {', '.join(METHODS)}; got 'lime'"}
    outside = post(server, samples["ok"], headers={"X-Explain-Target": "7"})
    assert outside.status_code == 400 and "outside 0..2" in outside.json()["error"]
    assert post(server, samples["ok"]).status_code == 200  # the worker keeps serving


def test_served_map_equals_the_engine_map(server, samples):
    """The handler adds nothing wrong: decoding, resizing, colour order, normalisation."""
    served = post(server, samples["dent"], headers={"X-Explain-Format": "raw"}).json()
    model = InspectionNet()
    model.load_state_dict(torch.load(WEIGHTS_FILE, weights_only=True))
    tensor = preprocess(Image.open(io.BytesIO(samples["dent"])))
    (local,) = Explainer(model, (INPUT_SIZE, INPUT_SIZE)).explain(tensor[None], [Job("gradcam")])
    expected = local.explanations[0].values.numpy()
    assert np.allclose(np.array(served["explanations"][0]["values"]), expected, rtol=1e-4, atol=1e-6 * expected.max())
    assert served["predictions"][0]["probability"] == pytest.approx(float(local.probabilities.max()), abs=1e-4)


def test_worker_log_names_layer_and_path(server):
    threads = os.environ.get("OMP_NUM_THREADS", "1")  # the handler's default is one per worker
    assert re.search(
        rf"model inspection ready on cpu with {threads} torch thread\(s\): layer features, 3 classes, "
        r"Grad-CAM via CAM",
        server.log(),
    )
