"""A bounded load generator for the integration tests: fixed request list, fixed threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Request:
    body: bytes
    headers: dict[str, str]
    expect: Callable[[int, dict], str | None]  # returns a problem description, or None


@dataclass
class Outcome:
    index: int
    status: int  # 0: no HTTP answer (connection error)
    problem: str | None
    sent_at: float
    seconds: float


def run(url: str, plan: Sequence[Request], concurrency: int, timeout: float = 60) -> list[Outcome]:
    """Send every request of ``plan`` exactly once, ``concurrency`` at a time."""
    local = threading.local()

    def send(index: int) -> Outcome:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        request = plan[index]
        started = time.monotonic()
        try:
            answer = session.post(url, data=request.body, headers=request.headers, timeout=timeout)
            try:
                body = answer.json()
            except ValueError:
                body = {"unparsed": answer.text[:200]}
            problem = request.expect(answer.status_code, body)
            return Outcome(index, answer.status_code, problem, started, time.monotonic() - started)
        except requests.RequestException as error:
            return Outcome(index, 0, f"{type(error).__name__}", started, time.monotonic() - started)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(send, range(len(plan))))
