"""The faithfulness option through a real TorchServe: headers, JSON bodies, a shared batch, refusals."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import requests


def post(server, model: str = "inspection", **kwargs) -> requests.Response:
    return requests.post(f"{server.url()}/predictions/{model}", timeout=60, **kwargs)


def test_header_and_json_body_each_get_their_measure(server, samples):
    by_header = post(server, data=samples["scratch"], headers={"X-Explain-Faithfulness": "drop"})
    body = {"data": base64.b64encode(samples["dent"]).decode(), "faithfulness": "full", "faithfulness_steps": 4}
    by_json = post(server, json=body)
    assert by_header.status_code == by_json.status_code == 200
    drop = by_header.json()["explanations"][0]["faithfulness"]
    assert set(drop) == {"score", "confidence_drop", "confidence_increase", "evidence_kept", "coverage"}
    assert drop["score"] > 0.8
    full = by_json.json()["explanations"][0]["faithfulness"]
    assert full["insertion_auc"] > full["deletion_auc"]


def test_in_one_batch_the_measure_leaves_every_prediction_as_it_is(server, samples):
    asks = [{}, {"X-Explain-Faithfulness": "drop"}, {"X-Explain-Faithfulness": "full"}, {}]
    images = [samples["scratch"], samples["scratch"], samples["dent"], samples["dent"]]
    with ThreadPoolExecutor(len(asks)) as pool:  # inspection_batched waits to batch them together
        sent = [
            pool.submit(post, server, "inspection_batched", data=i, headers=a)
            for a, i in zip(asks, images, strict=True)
        ]
        answers = [future.result() for future in sent]
    assert [a.status_code for a in answers] == [200] * 4
    bodies = [a.json() for a in answers]
    assert bodies[0]["predictions"] == bodies[1]["predictions"]
    assert bodies[2]["predictions"] == bodies[3]["predictions"]
    assert ["faithfulness" in b["explanations"][0] for b in bodies] == [False, True, True, False]


def test_refusals_name_the_option(server, samples):
    eigencam = post(
        server, data=samples["dent"], headers={"X-Explain-Faithfulness": "drop", "X-Explain-Method": "eigencam"}
    )
    steps = post(
        server, data=samples["dent"], headers={"X-Explain-Faithfulness": "full", "X-Explain-Faithfulness-Steps": "99"}
    )
    assert eigencam.status_code == steps.status_code == 400
    assert "option 'faithfulness' applies to class-specific methods only" in eigencam.json()["error"]
    assert "max_faithfulness_steps" in steps.json()["error"]
