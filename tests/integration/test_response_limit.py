"""An answer over the server's max_response_size would make TorchServe drop the worker and fail
its batch: the handler refuses it first, for that request alone, on a real TorchServe."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from handlers.archive import main as archive_main
from handlers.testing.torchserve import TorchServe

pytestmark = pytest.mark.integration

SERVER_LIMIT = 100_000  # the server's max_response_size, far below an answer of raw maps
MODEL_LIMIT = 80_000  # the model's max_response_bytes, set below the server's as the README says


def test_an_answer_over_the_limit_is_refused_and_its_batch_mates_answered(tmp_path, samples):
    store = tmp_path / "store"
    archive_main(
        [
            "inspection",
            "--name",
            "small_answers",
            "--max-response-bytes",
            str(MODEL_LIMIT),
            "--max-batch-delay",
            "2000",
            "--export-path",
            str(store),
            "--no-check",
        ]
    )
    config = {"max_response_size": str(SERVER_LIMIT)}
    with TorchServe(store, {"small_answers": "small_answers.mar"}, tmp_path / "work", config=config) as server:
        url = f"{server.url()}/predictions/small_answers"
        workers = server.worker_pids()
        huge = json.dumps(
            {
                "data": base64.b64encode(samples["dent"]).decode(),
                "format": "raw",
                "size": "input",
                "top_k_explanations": 3,
            }
        )
        bodies = [
            (samples["scratch"], {}),
            (huge.encode(), {"Content-Type": "application/json"}),
            (samples["dent"], {}),
        ]
        with ThreadPoolExecutor(len(bodies)) as pool:  # one batch: the delay lets all three in
            answers = list(pool.map(lambda b: requests.post(url, data=b[0], headers=b[1], timeout=60), bodies))
        assert [a.status_code for a in answers] == [200, 400, 200], [a.text[:200] for a in answers]
        message = answers[1].json()["error"]
        assert f"limit of {MODEL_LIMIT} (max_response_bytes)" in message and "format=grid" in message
        assert [a.json()["predictions"][0]["label"] for a in (answers[0], answers[2])] == ["scratch", "dent"]
        assert server.worker_pids() == workers, "a worker was dropped"
