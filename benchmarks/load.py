"""A bounded closed-loop load generator for 127.0.0.1: threads + requests, nothing else.

``concurrency`` threads each send one request, wait for the answer, send the next,
until the window's deadline (or ``max_requests`` sent in total), then let their last
request finish. Throughput is completed requests over the time from the start to the
last answer: with a concurrency that is a multiple of the batch size the drain runs
full batches too, so the figure is the steady-state rate. An endpoint too slow to
answer even once in the window (stock IG on resnet50) keeps going until
``min_completed`` answers or ``cap_s``.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlsplit

import requests


@dataclass(frozen=True)
class Shot:
    """One request to send: POST ``body`` to ``url`` with ``headers``."""

    url: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if urlsplit(self.url).hostname != "127.0.0.1":
            raise ValueError(f"benchmarks only send traffic to 127.0.0.1, not {self.url}")


@dataclass
class Window:
    """What one load window measured."""

    elapsed_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0


def run_window(
    shots: Sequence[Shot],
    concurrency: int,
    duration_s: float,
    *,
    max_requests: int,
    min_completed: int = 1,
    cap_s: float = 60.0,
    timeout_s: float = 180.0,
) -> Window:
    """Closed-loop load at ``concurrency`` for ``duration_s`` (bounded by ``max_requests`` and ``cap_s``)."""
    window = Window()
    lock = threading.Lock()
    sent = 0
    start = time.monotonic()
    deadline, hard_deadline = start + duration_s, start + max(duration_s, cap_s)
    last_answer = start

    def more() -> bool:
        nonlocal sent
        now = time.monotonic()
        with lock:
            wanted = now < deadline or (window.completed < min_completed and now < hard_deadline)
            if not wanted or sent >= max_requests:
                return False
            sent += 1
            return True

    def client(offset: int) -> None:
        nonlocal last_answer
        with requests.Session() as session:
            index = offset
            while more():
                shot = shots[index % len(shots)]
                index += concurrency
                began = time.monotonic()
                try:
                    answer = session.post(shot.url, data=shot.body, headers=dict(shot.headers), timeout=timeout_s)
                    error = "" if answer.status_code == 200 else f"HTTP {answer.status_code}: {answer.text[:200]}"
                except requests.RequestException as exc:
                    error = f"{type(exc).__name__}: {exc}"
                ended = time.monotonic()
                with lock:
                    if error:
                        window.errors += 1
                        window.first_error = window.first_error or error
                    else:
                        window.latencies.append(ended - began)
                        last_answer = max(last_answer, ended)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(duration_s, cap_s) + timeout_s + 5)
    window.elapsed_s = last_answer - start
    return window


@dataclass(frozen=True)
class Summary:
    """Several windows of one endpoint pooled, and their throughput relative to reference windows."""

    HEADERS: ClassVar[tuple[str, ...]] = (
        "req/s",
        "ratio per round",
        "best-window ratio",
        "p50 ms",
        "p99 ms",
        "requests",
        "errors",
    )
    rps: float  # all completed requests / all elapsed time
    ratios: tuple[float, ...]  # per window: rps / rps of the reference window of the same round
    best_ratio: float  # best window's rps / the reference's best window's rps (other load only lowers rps)
    p50_s: float
    p99_s: float
    requests: int
    errors: int
    first_error: str

    @classmethod
    def of(cls, windows: Sequence[Window], reference: Sequence[Window] = ()) -> Summary:
        latencies = [v for w in windows for v in w.latencies]
        best_reference = max((r.rps for r in reference), default=0.0)
        return cls(
            rps=sum(w.completed for w in windows) / max(sum(w.elapsed_s for w in windows), 1e-9),
            ratios=tuple(w.rps / r.rps for w, r in zip(windows, reference, strict=False) if r.rps > 0),
            best_ratio=max(w.rps for w in windows) / best_reference if best_reference else 0.0,
            p50_s=percentile(latencies, 0.5),
            p99_s=percentile(latencies, 0.99),
            requests=len(latencies),
            errors=sum(w.errors for w in windows),
            first_error=next((w.first_error for w in windows if w.errors), ""),
        )

    def cells(self) -> list[str]:
        """req/s, ratio median (min–max), best-window ratio, p50 ms, p99 ms, requests, errors."""
        ratio = (
            f"{statistics.median(self.ratios):.2f}x ({min(self.ratios):.2f}–{max(self.ratios):.2f})"
            if self.ratios
            else "–"
        )
        errors = f"{self.errors}: {self.first_error[:80]}" if self.errors else "0"
        return [
            f"{self.rps:.2f}",
            ratio,
            f"{self.best_ratio:.2f}x",
            f"{self.p50_s * 1e3:.0f}",
            f"{self.p99_s * 1e3:.0f}",
            str(self.requests),
            errors,
        ]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
