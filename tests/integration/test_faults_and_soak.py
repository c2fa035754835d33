"""Faults and long runs: a killed worker recovers; a soak keeps every answer right and RSS flat."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections import Counter

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from handlers.inspection import CLASSES
from handlers.inspection.synthetic import render
from hostile_inputs import texture
from load import Request, run

pytestmark = pytest.mark.integration


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def valid_request(image: bytes, kind: str, method: str, target: str | None) -> Request:
    headers = {"X-Explain-Method": method, **({"X-Explain-Target": target} if target else {})}

    def expect(status: int, body: dict) -> str | None:
        if status != 200:
            return f"valid {kind} got {status}: {body}"
        explanations = body["explanations"]
        if method == "none":
            return None if explanations == [] else "method none returned explanations"
        wanted = target or body["predictions"][0]["label"]
        got = (explanations[0]["method"], explanations[0]["target"]["label"])
        return None if got == (method, wanted) else f"asked {method}/{wanted}, got {got}"

    return Request(image, headers, expect)


def invalid_request(body: bytes, headers: dict[str, str], status: int) -> Request:
    return Request(
        body,
        headers,
        lambda got, answer: None if got == status and "error" in answer else f"expected {status}, got {got}: {answer}",
    )


def mixed_plan(count: int, seed: int) -> tuple[list[Request], list[str]]:
    """``count`` requests: 3/4 valid (all methods, default and explicit targets), 1/4 invalid."""
    rng = np.random.default_rng(seed)
    images = {kind: [png(render(kind, rng).image) for _ in range(12)] for kind in CLASSES}
    bad = [
        (rng.bytes(3000), {}, 415),
        (images["ok"][0][:500], {}, 422),
        (images["dent"][0], {"X-Explain-Method": "lime"}, 400),
        (b"", {}, 400),
        (images["ok"][1], {"X-Explain-Target": "7"}, 400),
        (png(np.asarray(texture(9, 9))), {}, 200),
    ]
    plan, kinds = [], []
    for i in range(count):
        if i % 4 == 3:
            body, headers, status = bad[int(rng.integers(len(bad)))]
            plan.append(
                invalid_request(body, headers, status)
                if status != 200
                else valid_request(body, "tiny", "gradcam", None)
            )
            kinds.append("invalid")
            continue
        kind = CLASSES[int(rng.integers(3))]
        method = ("gradcam", "gradcam", "guided_gradcam", "none")[int(rng.integers(4))]
        target = (None, None, CLASSES[int(rng.integers(3))])[int(rng.integers(3))]
        plan.append(valid_request(images[kind][int(rng.integers(12))], kind, method, target))
        kinds.append(kind)
    return plan, kinds


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def first_success_after(url: str, image: bytes, since: float, limit_s: float = 120) -> float | None:
    """Seconds from ``since`` to the first 200 on a valid request, probing until ``limit_s``."""
    while time.monotonic() < since + limit_s:
        try:
            if requests.post(url, data=image, timeout=60).status_code == 200:
                return time.monotonic() - since
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return None


def test_killed_worker_is_restarted_and_serving_resumes(server, samples):
    """Kill the worker mid-load: TorchServe restarts it; requests after recovery succeed."""
    url = f"{server.url()}/predictions/inspection"
    plan, _ = mixed_plan(1200, seed=5)  # several seconds of load: the kill lands mid-way
    (worker,) = server.worker_pids("inspection")
    killed_at: list[float] = []

    def kill_soon() -> None:
        time.sleep(1)
        killed_at.append(time.monotonic())
        os.kill(worker, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    outcomes = run(url, plan, concurrency=8)
    killer.join()
    failed = [o for o in outcomes if o.problem]
    in_load = [o.sent_at + o.seconds - killed_at[0] for o in outcomes if o.sent_at > killed_at[0] and not o.problem]
    recovered = min(in_load, default=None) or first_success_after(url, samples["scratch"], killed_at[0])
    print(
        f"\nfault: {len(plan)} requests, {len(failed)} failed by status {dict(Counter(o.status for o in failed))}, "
        + (f"first success {recovered:.1f}s after the kill" if recovered else "no recovery")
    )
    assert recovered is not None, "no request succeeded within 120 s of the worker being killed"
    assert all(o.status in (0, 500, 502, 503, 507) for o in failed), [o.problem for o in failed][:5]
    assert len(failed) <= 8 * 3, "more failures than the requests in flight and queued at the kill"
    afterwards = run(url, mixed_plan(200, seed=6)[0], concurrency=8)
    assert not [o.problem for o in afterwards if o.problem], "requests still failing after the recovery"
    assert server.ready_workers("inspection") == 1 and server.worker_pids("inspection") != [worker]


@pytest.mark.slow
def test_soak_mixed_load_keeps_answers_right_and_memory_flat(server):
    """20,000 mixed requests above batch size: zero 5xx, every answer matches, RSS flat."""
    url = f"{server.url()}/predictions/inspection"
    warmup, _ = mixed_plan(500, seed=11)
    run(url, warmup, concurrency=16)
    (worker,) = server.worker_pids("inspection")
    rss = [rss_mb(worker)]
    outcomes, started = [], time.monotonic()
    for part in range(4):  # RSS read after each quarter: growth would show as a trend
        plan, _ = mixed_plan(5000, seed=12 + part)
        outcomes += run(url, plan, concurrency=16)
        rss.append(rss_mb(worker))
    seconds = time.monotonic() - started
    statuses = Counter(o.status for o in outcomes)
    problems = [o.problem for o in outcomes if o.problem]
    print(
        f"\nsoak: {len(outcomes)} requests in {seconds:.0f}s ({len(outcomes) / seconds:.1f}/s) at concurrency 16, "
        f"statuses {dict(sorted(statuses.items()))}, {len(problems)} mismatches; "
        f"worker RSS after warm-up and each 5,000: {' -> '.join(f'{mb:.0f}' for mb in rss)} MB"
    )
    assert not problems, problems[:5]
    assert not any(status >= 500 for status in statuses)
    assert server.worker_pids("inspection") == [worker]
    assert rss[-1] - rss[0] < 40, f"worker RSS grew {rss[-1] - rss[0]:.0f} MB"
    assert rss[-1] - rss[1] < 15, f"worker RSS still growing after the first 5,000: {rss}"
