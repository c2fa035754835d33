"""A JPEG scan bomb against a real TorchServe: refused fast, batch-mates answered, no worker lost."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from decode_bombs import scan_bomb

pytestmark = pytest.mark.integration

# Without the scan check this body costs libjpeg ~40,000 passes over a 36 MP buffer (minutes).
BOMB_SECONDS = 30  # generous: the refusal itself takes well under a second


def post(server, body: bytes) -> tuple[requests.Response, float]:
    """POST ``body`` to the batched model; the answer and how long it took."""
    started = time.perf_counter()
    answer = requests.post(f"{server.url()}/predictions/inspection_batched", data=body, timeout=120)
    return answer, time.perf_counter() - started


def test_scan_bomb_is_refused_quickly_and_its_batch_mate_is_served(server, samples):
    bomb = scan_bomb(6000, 6000, 40_000)
    assert len(bomb) < 6_553_500  # under TorchServe's max_request_size: it reaches the handler
    workers_before = server.worker_pids()
    with ThreadPoolExecutor(2) as pool:
        bomb_answer, witness_answer = pool.map(lambda body: post(server, body), [bomb, samples["scratch"]])
    answer, seconds = bomb_answer
    assert answer.status_code == 422, answer.text
    assert "scans" in answer.json()["error"] and "at most 100" in answer.json()["error"]
    assert seconds < BOMB_SECONDS
    assert witness_answer[0].status_code == 200
    assert witness_answer[0].json()["predictions"][0]["label"] == "scratch"
    assert server.worker_pids() == workers_before, "a worker restarted"
