"""Hostile and awkward uploads against a real TorchServe, inside batches of good requests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from hostile_inputs import corpus

pytestmark = pytest.mark.integration

MAX_IMAGE_PIXELS = 40_000_000  # the archive CLI's default cap
CASES_PER_BATCH = 6  # plus two good witnesses: a full batch of 8


def post(server, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{server.url()}/predictions/inspection_batched", data=body, headers=headers, timeout=60)


def test_every_case_gets_its_answer_and_the_batch_is_not_lost(server, samples):
    cases = corpus(MAX_IMAGE_PIXELS)
    workers_before = server.worker_pids()
    failures = []
    for start in range(0, len(cases), CASES_PER_BATCH):
        chunk = cases[start : start + CASES_PER_BATCH]
        witnesses = [(samples["scratch"], "scratch"), (samples["dent"], "dent")]
        with ThreadPoolExecutor(len(chunk) + len(witnesses)) as pool:
            answers = list(pool.map(lambda c: post(server, c.body, c.headers), chunk))
            checks = list(pool.map(lambda w: post(server, w[0], {}), witnesses))
        for case, answer in zip(chunk, answers, strict=True):
            body = answer.json()
            if answer.status_code != case.status:
                failures.append(f"{case.name}: {answer.status_code} {body}")
            elif case.status == 200:
                assert body["predictions"] and body["explanations"], case.name
            else:
                assert set(body) == {"error"} and case.error_hint in body["error"], (case.name, body)
        for (_, label), answer in zip(witnesses, checks, strict=True):
            assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == label
    assert not failures, "\n".join(failures)
    assert server.worker_pids() == workers_before, "a worker restarted"


def test_body_over_the_server_limit_is_refused_by_torchserve(server):
    too_large = b"\xff" * (6_553_500 + 1024)  # TorchServe's default max_request_size
    answer = requests.post(f"{server.url()}/predictions/inspection", data=too_large, timeout=60)
    assert answer.status_code == 413
    assert requests.post(f"{server.url()}/predictions/inspection", data=b"", timeout=60).status_code == 400


def test_an_image_sent_as_a_urlencoded_form_is_refused_for_that_request_only(server, samples):
    """``curl --data-binary @img`` sends a urlencoded form. Where the frontend forwards the fields,
    the handler answers 415 saying what to send; where the bytes break TorchServe's own form
    decoder, the frontend answers 500 before the handler runs (a TorchServe 0.12 limit, in the
    README). Either way no other request is touched."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    answers = {name: post(server, samples[name], form) for name in ("scratch", "dent")}
    for name, answer in answers.items():
        if answer.status_code == 415:
            assert "curl -T" in answer.json()["error"], name
        else:
            assert answer.status_code == 500 and "ErrorDataDecoderException" in answer.text, (name, answer.text[:200])
    assert post(server, samples["scratch"], {}).json()["predictions"][0]["label"] == "scratch"
