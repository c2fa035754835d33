"""Small-request latency while a burst of the heaviest legal images is being served.

``python -m benchmarks.burst_bench [--source DIR] [--label after]`` starts a real
TorchServe configured as ``make serve`` does (``--source``'s config.properties: 2 workers,
no token) on private loopback ports, serving the default model built from the ``handlers`` package in
``--source`` (default: this checkout; the MAR ships the package it is built from, and the
server's PYTHONPATH points there too). Then, per round:

1. reference: small 224 px JPEGs sent one after another with no other load;
2. burst: 16 heavy legal images sent at once (16 threads, one upload each) while a
   separate thread keeps sending the small JPEG one request after another.

It reports p50 / p99 / max latency of the small requests during the burst, the same
with no burst, their ratios, and the burst's own duration (first upload to last answer).
The heavy images are all under the model's 40 MP cap: grainy baseline and progressive
JPEGs of 36-40 MP and smooth 40 MP PNGs. ``max_request_size`` is raised in the test server's config to
fit the largest of them (TorchServe's default, 6.5 MB, would refuse some with 413 before
any decoding: that would measure the frontend's refusal, not the burst). Results go to the
``Small-request latency during a burst (<label>)`` section of benchmarks/RESULTS-frontend.md.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from benchmarks.frontend_memory import RESULTS, write_section
from benchmarks.load import percentile
from benchmarks.report import machine, table
from benchmarks.server import REPO, private_config
from handlers.testing.torchserve import TorchServe

BURST_SIZE = 16
MAX_SMALL_REQUESTS = 2000  # a bound on the small-request thread of one phase
PHASE_CAP_S = 300.0  # no phase runs longer than this, whatever the server does
# (width, height, format, progressive): 36-40 MP, all within the 40,000,000-pixel cap.
JPEG_GRAIN = 12.0
HEAVY_SHAPES = (
    (7300, 5450, "JPEG", False),  # 39.8 MP baseline
    (7300, 5450, "JPEG", True),  # 39.8 MP progressive
    (6930, 5200, "JPEG", False),  # 36.0 MP baseline
    (6930, 5200, "JPEG", True),  # 36.0 MP progressive
    (7400, 5400, "PNG", False),  # 40.0 MP PNG
)


def picture(width: int, height: int, seed: int, grain: float = 0.0) -> Image.Image:
    """Smooth gradients, row texture, and per-pixel noise of std ``grain`` (film-grain-like: a
    high-entropy JPEG, the costliest to entropy-decode, still well under 40 MP)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    channels = [
        (np.sin((x * rng.uniform(2, 9) + y * rng.uniform(2, 9)) * np.pi) + 1) * 110 + rng.uniform(0, 30)
        for _ in range(3)
    ]
    pixels = np.stack(channels, axis=-1)
    pixels += rng.normal(0, 6, (height, 1, 1)).astype(np.float32)  # row-wise texture, cheap to generate
    if grain:
        pixels += rng.normal(0, grain, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, progressive: bool) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=92, progressive=progressive)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def heavy_images() -> list[tuple[str, bytes]]:
    """16 (description, bytes): the shapes of HEAVY_SHAPES in turn, each image distinct."""
    images = []
    for index in range(BURST_SIZE):
        width, height, fmt, progressive = HEAVY_SHAPES[index % len(HEAVY_SHAPES)]
        kind = f"{width}x{height} {fmt}{' progressive' if progressive else ''}"
        grain = JPEG_GRAIN if fmt == "JPEG" else 0.0  # a grainy 40 MP PNG would be ~100 MB
        images.append((kind, encode(picture(width, height, index, grain), fmt, progressive)))
    return images


def small_jpeg() -> bytes:
    """A 224 x 224 JPEG: the ordinary request whose latency the burst must not ruin."""
    return encode(picture(224, 224, 99), "JPEG", False)


def build_mar(source: Path, store: Path) -> None:
    """Build the default MAR from the ``handlers`` package under ``source``, in a child process,
    so the MAR (which ships the package it is built from) holds that tree's code."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    command = [sys.executable, "-m", "handlers.archive", "inspection", "--export-path", str(store)]
    subprocess.run(command, cwd=source, env=env, check=True, capture_output=True)
    probe = "import handlers, sys; sys.stdout.write(handlers.__file__)"
    used = subprocess.run([sys.executable, "-c", probe], cwd=source, env=env, check=True, capture_output=True)
    if not used.stdout.decode().startswith(str(source)):
        raise RuntimeError(f"handlers imported from {used.stdout.decode()}, not from {source}")


@dataclass
class Phase:
    """Latencies of the small requests in one phase, and the burst's outcome if there was one."""

    small: list[float] = field(default_factory=list)
    small_errors: int = 0
    burst_s: float = 0.0
    burst_outcomes: Counter = field(default_factory=Counter)


def small_loop(url: str, body: bytes, phase: Phase, stop: threading.Event, deadline: float) -> None:
    """Send ``body`` one request after another until ``stop``, MAX_SMALL_REQUESTS or ``deadline``."""
    with requests.Session() as session:
        while not stop.is_set() and len(phase.small) + phase.small_errors < MAX_SMALL_REQUESTS:
            if time.monotonic() > deadline:
                return
            began = time.monotonic()
            try:
                answer = session.post(url, data=body, timeout=PHASE_CAP_S)
                ok = answer.status_code == 200
            except requests.RequestException:
                ok = False
            if ok:
                phase.small.append(time.monotonic() - began)
            else:
                phase.small_errors += 1


def reference(url: str, body: bytes, seconds: float) -> Phase:
    """Small requests alone for ``seconds``."""
    phase, stop = Phase(), threading.Event()
    small_loop(url, body, phase, stop, time.monotonic() + seconds)
    return phase


def burst(url: str, body: bytes, heavy: list[tuple[str, bytes]]) -> Phase:
    """The heavy images all at once while the small requests keep going; bounded by PHASE_CAP_S."""
    phase, stop = Phase(), threading.Event()
    deadline = time.monotonic() + PHASE_CAP_S
    small = threading.Thread(target=small_loop, args=(url, body, phase, stop, deadline), daemon=True)
    lock = threading.Lock()
    gate = threading.Barrier(len(heavy) + 1)

    def upload(data: bytes) -> None:
        gate.wait()
        try:
            status = str(requests.post(url, data=data, timeout=PHASE_CAP_S).status_code)
        except requests.RequestException as exc:
            status = type(exc).__name__
        with lock:
            phase.burst_outcomes[status] += 1

    uploads = [threading.Thread(target=upload, args=(data,), daemon=True) for _, data in heavy]
    for thread in uploads:
        thread.start()
    small.start()
    gate.wait()
    started = time.monotonic()
    for thread in uploads:
        thread.join(max(0.0, deadline - time.monotonic()))
    phase.burst_s = time.monotonic() - started
    stop.set()
    small.join(PHASE_CAP_S)
    return phase


def latency_cells(values: list[float], errors: int) -> list[str]:
    return [
        f"{percentile(values, 0.5) * 1e3:.0f}",
        f"{percentile(values, 0.99) * 1e3:.0f}",
        f"{max(values, default=0) * 1e3:.0f}",
        str(len(values)),
        str(errors),
    ]


def ratio(during: list[float], alone: list[float], q: float | None) -> str:
    """during / alone at quantile q (None: max)."""
    pick = (lambda v: max(v, default=0.0)) if q is None else (lambda v: percentile(v, q))
    base = pick(alone)
    return f"{pick(during) / base:.0f}x" if base > 0 else "–"


def report(label: str, source: Path, heavy: list[tuple[str, bytes]], rounds: list[tuple[Phase, Phase]]) -> str:
    """The markdown section: setup, one row per phase, pooled ratios."""
    sizes = Counter((kind, round(len(data) / 2**20, 1)) for kind, data in heavy)
    images = ", ".join(f"{count} x {kind} (~{mb} MB)" for (kind, mb), count in sorted(sizes.items()))
    rows = []
    for index, (alone, during) in enumerate(rounds, 1):
        rows.append([index, "no burst (reference)", *latency_cells(alone.small, alone.small_errors), "–", "–"])
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(during.burst_outcomes.items()))
        rows.append(
            [
                index,
                f"during {BURST_SIZE} heavy uploads",
                *latency_cells(during.small, during.small_errors),
                f"{during.burst_s:.1f}",
                outcomes,
            ]
        )
    alone_all = [v for alone, _ in rounds for v in alone.small]
    during_all = [v for _, during in rounds for v in during.small]
    headers = ("round", "small requests", "p50 ms", "p99 ms", "max ms", "count", "errors", "burst s", "burst statuses")
    return "\n\n".join(
        [
            machine(),
            f"Server: `{source}/config.properties` (`make serve`: 2 workers, no token) on private loopback ports, "
            f"max_request_size raised to fit the largest heavy image; handlers from `{source}`. "
            f"Heavy images: {images}. Small request: one 224 x 224 JPEG, sent one after another by a "
            "single thread; latency = send to full answer. Regenerate with "
            f"`python -m benchmarks.burst_bench --label '{label}'`.",
            table(headers, rows),
            f"All rounds pooled, during burst / no burst: p50 {ratio(during_all, alone_all, 0.5)}, "
            f"p99 {ratio(during_all, alone_all, 0.99)}, max {ratio(during_all, alone_all, None)}.",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.burst_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=REPO, help="tree whose handlers package is served")
    parser.add_argument("--label", default="current", help="section label, e.g. before / after")
    parser.add_argument("--rounds", type=int, default=3, choices=range(1, 6))
    parser.add_argument("--reference-s", type=float, default=10.0, help="seconds of small requests alone per round")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    source = args.source.resolve()
    heavy, small = heavy_images(), small_jpeg()
    request_limit = max(6553500, max(len(data) for _, data in heavy) + 2**20)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="burst-bench-") as tmp:
        store = Path(tmp) / "model_store"
        build_mar(source, store)
        config = {**private_config(), "max_request_size": str(request_limit)}
        dev_config = source / "config.properties"  # the config of the same tree, as `make serve` there
        server = TorchServe(
            store,
            {"inspection": "inspection.mar"},
            Path(tmp) / "server",
            config,
            dev_config,
            {"PYTHONPATH": str(source)},
        )
        server.start(timeout=300)
        try:
            url = f"{server.url()}/predictions/inspection"
            reference(url, small, 3.0)  # warm-up: both workers loaded and past their first request
            for _ in range(args.rounds):
                rounds.append((reference(url, small, args.reference_s), burst(url, small, heavy)))
                alone, during = rounds[-1]
                print(
                    f"reference p50 {percentile(alone.small, 0.5) * 1e3:.0f} ms; during burst "
                    f"p50 {percentile(during.small, 0.5) * 1e3:.0f} ms, max {max(during.small, default=0):.1f} s, "
                    f"burst {during.burst_s:.1f} s {dict(during.burst_outcomes)}",
                    flush=True,
                )
        finally:
            server.stop()
    text = report(args.label, source, heavy, rounds)
    write_section(f"Small-request latency during a burst ({args.label})", text, args.output)
    print(text)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
