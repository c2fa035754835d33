"""End to end as `make serve` runs it (section 13): Grad-CAM vs method=none vs stock, and where
the per-request time goes inside the worker.

One server with the repository's settings (2 workers per model, batchSize 8, maxBatchDelay 50
ms, one torch thread per worker) hosts the default MAR and the stock ``image_classifier`` MAR
of the same weights (also 2 workers). 224 px JPEGs at concurrency 16, windows of each endpoint
in rotating order; the verdicts use the median of the per-round ratios. The worker profile runs
the handler in this process on TorchServe's real Context: CPU time per request of each stage.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from handlers.inspection import WEIGHTS_FILE
from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import load_context, unpack_mar, with_requests

from .artifacts import build_ours, build_stock, photo_like_jpegs
from .load import Shot, Window, run_window
from .monitor import ForeignLoad
from .report import Section, Target, table
from .server import BenchServer
from .settings import Settings

WORKERS = 2
CONCURRENCY = 16
GOALS = {"gradcam / none": 0.97, "none / stock": 1.00}
ENDPOINTS = ("ours, method=none", "ours, method=gradcam", "stock /predictions")


def images() -> tuple[bytes, ...]:
    return photo_like_jpegs(4, (224, 224))


def shots(url: str, endpoint: str, bodies: tuple[bytes, ...]) -> list[Shot]:
    if endpoint.startswith("stock"):
        return [Shot(f"{url}/predictions/stock_inspection", body) for body in bodies]
    method = endpoint.rsplit("=", 1)[1]
    return [Shot(f"{url}/predictions/inspection", body, {"X-Explain-Method": method}) for body in bodies]


def end_to_end(store: Path, workdir: Path, settings: Settings, rounds: int) -> dict[str, list[Window]]:
    """Windows of every endpoint, ``rounds`` times in rotating order, after one warm-up each."""
    ours = build_ours(store, "inspection", "inspection", None, workers=WORKERS)
    stock = build_stock(store, "inspection", "stock_inspection", WEIGHTS_FILE, workers=WORKERS)
    bodies = images()
    windows: dict[str, list[Window]] = {e: [] for e in ENDPOINTS}
    models = {"inspection": ours, "stock_inspection": stock}
    with BenchServer(store, models, workdir / "serve", env={"OMP_NUM_THREADS": "1"}) as server:
        for endpoint in ENDPOINTS:
            run_window(shots(server.url(), endpoint, bodies), CONCURRENCY, settings.warmup_window_s, max_requests=10**6)
        for r in range(rounds):
            for endpoint in ENDPOINTS[r % 3 :] + ENDPOINTS[: r % 3]:
                window = run_window(
                    shots(server.url(), endpoint, bodies), CONCURRENCY, settings.window_s, max_requests=10**6
                )
                windows[endpoint].append(window)
    return windows


def paired(windows: dict[str, list[Window]], name: str, reference: str) -> list[float]:
    return [a.rps / b.rps for a, b in zip(windows[name], windows[reference], strict=True) if b.rps]


def stage_profile(mar: Path, calls: int) -> list[list[str]]:
    """CPU ms per request of the handler's stages, batches of 8 224 px JPEGs, for none and gradcam."""
    with tempfile.TemporaryDirectory(prefix="serve-profile-") as tmp:
        context = load_context(unpack_mar(mar, Path(tmp)), "inspection")
        handler = GradCamHandler()
        handler.initialize(context)
        pictures = images()
        bodies = [pictures[i % len(pictures)] for i in range(8)]
        totals: dict[str, dict[str, float]] = {}
        for method in ("none", "gradcam") * 2:  # the first pass of each warms up
            spent = dict.fromkeys(("read and decode", "engine", "answer and JSON"), 0.0)
            for _ in range(calls):
                rows = [{"body": body} for body in bodies]
                handler.context = with_requests(context, [{"x-explain-method": method}] * len(rows))
                with _stage(spent, "read and decode"):
                    prepared = handler.preprocess(rows)
                with _stage(spent, "engine"):
                    outcomes = handler.inference(prepared)
                with _stage(spent, "answer and JSON"):
                    handler.postprocess(outcomes, prepared)
            totals[method] = {k: v / (calls * len(bodies)) * 1e3 for k, v in spent.items()}
    rows_out = []
    for stage in ("read and decode", "engine", "answer and JSON"):
        rows_out.append([stage, *(f"{totals[m][stage]:.3f}" for m in ("none", "gradcam"))])
    rows_out.append(["total", *(f"{sum(totals[m].values()):.3f}" for m in ("none", "gradcam"))])
    return rows_out


@contextmanager
def _stage(spent: dict[str, float], stage: str) -> Iterator[None]:
    """Adds the block's CPU time to ``spent[stage]``."""
    began = time.process_time()
    yield
    spent[stage] += time.process_time() - began


def run(settings: Settings, workdir: Path) -> Section:
    quick = settings.name == "quick"
    rounds = 2 if quick else 7
    store = workdir / "serve-store"
    store.mkdir(parents=True, exist_ok=True)
    section = Section("13. End to end in the `make serve` configuration, and the worker's per-request time")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker
    try:
        profile = stage_profile(store / build_ours(store, "inspection", "profiled", None), 20 if quick else 100)
    finally:
        torch.set_num_threads(threads)
    with ForeignLoad() as load:
        windows = end_to_end(store, workdir, settings, rounds)
    summary = load.summary()
    ratios = {
        "gradcam / none": paired(windows, "ours, method=gradcam", "ours, method=none"),
        "none / stock": paired(windows, "ours, method=none", "stock /predictions"),
    }
    rows = []
    for endpoint, measured in windows.items():
        done = sum(w.completed for w in measured)
        rps = done / max(sum(w.elapsed_s for w in measured), 1e-9)
        rows.append([endpoint, f"{rps:.1f}", str(done), str(sum(w.errors for w in measured))])
    section.add(
        f"{WORKERS} workers per model (OMP_NUM_THREADS=1), batchSize 8, maxBatchDelay 50 ms; 224 px JPEGs at "
        f"concurrency {CONCURRENCY}; {rounds} rounds of {settings.window_s:g} s windows per endpoint in rotating "
        f"order. During this section {summary.describe()}.",
        table(["endpoint", "req/s (pooled)", "requests", "errors"], rows),
        table(
            ["ratio", "median of paired rounds", "rounds (min–max)"],
            [
                [name, f"{statistics.median(values):.3f}x", f"{min(values):.2f}–{max(values):.2f}"]
                for name, values in ratios.items()
                if values
            ],
        ),
        "Inside the worker (the handler in this process on TorchServe's Context, batches of 8, CPU ms per "
        "request; the frontend's share is not in it):",
        table(["stage", "method=none", "method=gradcam"], profile),
    )
    for name, goal in GOALS.items():
        values = ratios[name]
        median = statistics.median(values) if values else 0.0
        section.targets.append(
            Target(
                f"end to end, make serve configuration, c={CONCURRENCY}: throughput {name}",
                f"≥ {goal:.2f}x",
                f"{median:.3f}x (median of {len(values)} paired rounds)",
                median >= goal,
                summary.disturbed,
            )
        )
    return section
