"""The production config's frontend limits on a real TorchServe: memory stays bounded under a
burst of large uploads, and which endpoints answer without a token (pinned, so a change of
TorchServe or of the config is noticed). Sizing rule: benchmarks/RESULTS-frontend.md."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter

import numpy as np
import pytest
import requests
from PIL import Image

from handlers.testing.torchserve import (
    PROD_CONFIG,
    TorchServe,
    bearer,
    frontend_rss_bound,
    java_process,
    read_properties,
    start_with_tokens,
)

pytestmark = pytest.mark.integration

# More than job_queue_size + workers x batchSize can hold (the rest get 503) but within
# Netty's direct cap (64 x 5.9 MB < 768 MB): past the cap uploads fail as a whole
# (benchmarks/RESULTS-frontend.md).
UPLOADS = 64


def rss_bound() -> int:
    """The sizing rule's bound on the frontend's RSS for config.prod.properties."""
    bound = frontend_rss_bound(read_properties(PROD_CONFIG))
    assert bound is not None, "config.prod.properties must bound the JVM's heap and direct memory"
    return bound


@pytest.fixture(scope="module")
def limited_server(model_store, tmp_path_factory):
    """config.prod.properties as it is (token auth, memory limits), on private loopback ports."""
    server = start_with_tokens(
        TorchServe(
            model_store, {"inspection": "inspection.mar"}, tmp_path_factory.mktemp("limits"), base_config=PROD_CONFIG
        )
    )
    try:
        yield server
    finally:
        server.stop()


def large_png(side: int = 1400) -> bytes:
    """A valid ~5.9 MB PNG of noise: read whole, queued and decoded, the frontend's worst case."""
    pixels = np.random.default_rng(3).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_prod_config_sets_memory_limits():
    settings = read_properties(PROD_CONFIG)
    assert int(settings["job_queue_size"]) > 0
    assert "ExitOnOutOfMemoryError" not in settings["vmargs"]  # a refused upload must not stop the server
    assert rss_bound() < 2 * 2**30


def test_burst_of_large_uploads_keeps_frontend_rss_bounded(limited_server, samples):
    java = java_process(limited_server)
    body, url = large_png(), f"{limited_server.url()}/predictions/inspection"
    headers = {**bearer(limited_server.keys["inference"]), "Content-Type": "image/png"}
    peak, lock = java.memory_info().rss, threading.Lock()
    outcomes: Counter[str] = Counter()

    def upload() -> None:
        try:
            status = str(requests.post(url, data=body, headers=headers, timeout=60).status_code)
        except requests.RequestException:
            status = "connection error"
        with lock:
            outcomes[status] += 1

    threads = [threading.Thread(target=upload, daemon=True) for _ in range(UPLOADS)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.1)
        peak = max(peak, java.memory_info().rss)
        if peak > rss_bound():
            break
    for thread in threads:
        thread.join(70)
    assert peak <= rss_bound(), f"frontend RSS {peak / 2**20:.0f} MB over {rss_bound() / 2**20:.0f} MB: {outcomes}"
    answer = requests.post(url, data=samples["scratch"], headers=bearer(limited_server.keys["inference"]), timeout=60)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "scratch", outcomes


@pytest.mark.parametrize(
    ("method", "port", "path", "status"),
    [
        ("GET", "inference", "/api-description", 200),
        ("OPTIONS", "inference", "/", 200),
        ("GET", "management", "/api-description", 200),
        ("OPTIONS", "management", "/", 200),
        ("GET", "metrics", "/metrics", 200),
    ],
)
def test_endpoints_that_answer_without_a_token(limited_server, method, port, path, status):
    """TorchServe 0.12 serves these before (or without) its token check: README, "Token-free endpoints"."""
    answer = requests.request(method, limited_server.url(port) + path, timeout=30)
    assert answer.status_code == status, answer.text[:200]


@pytest.mark.parametrize(
    ("method", "port", "path"),
    [
        ("POST", "inference", "/predictions/inspection"),
        ("POST", "inference", "/explanations/inspection"),
        ("GET", "management", "/models"),
        ("GET", "management", "/models/inspection"),
        ("GET", "inference", "/ping"),
    ],
)
def test_endpoints_that_need_a_token(limited_server, method, port, path):
    answer = requests.request(method, limited_server.url(port) + path, data=b"x", timeout=30)
    assert answer.status_code == 400 and "Token Authorization failed" in answer.json()["message"]


def test_no_token_request_is_read_whole_before_it_is_refused(limited_server):
    """The token check runs after the body is aggregated: an unauthenticated upload costs the
    frontend its size in memory before the 400 (bounded only by max_request_size and vmargs)."""
    body = b"\0" * (int(read_properties(PROD_CONFIG)["max_request_size"]) - 1024)
    answer = requests.post(f"{limited_server.url()}/predictions/inspection", data=body, timeout=30)
    assert answer.status_code == 400 and "Token Authorization failed" in answer.json()["message"]
