"""Section 2 (and the worker half of section 3): a real TorchServe under bounded load.

Per model one server hosts our MAR and the stock ``image_classifier`` MAR (same weights,
batchSize 8). Endpoints: ours with ``X-Explain-Method: none | gradcam | guided_gradcam``,
stock ``/predictions`` and stock ``/explanations`` (Captum IntegratedGradients, n_steps=15).
First every endpoint gets one warm-up window on the fresh workers, cheapest first, and
the worker's peak RSS is read after each (so each peak says what that traffic added);
then, per concurrency, windows run round-robin over the endpoints for several rounds.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import Served
from .load import Shot, Summary, Window, run_window
from .monitor import ForeignLoad, LoadSummary
from .report import Section, Target, megabytes, table
from .server import BenchServer, peak_rss, rss
from .settings import Settings

TARGET_RATIO = 0.90
# One torch thread per worker, as section 4 recommends. With TorchServe's default (2 OpenMP
# threads per worker, sharing 2 cores with the frontend, the load generator and any other
# load) OpenMP's spin-waiting makes every window hostage to the scheduler. One worker per
# MAR (not the faster 2 x 1 thread) keeps the worker memory table one process per handler.
WORKER_ENV = {"OMP_NUM_THREADS": "1"}
# Stock IG runs n_steps=15 x batch images through autograd with trainable parameters: for a
# batch of 8 resnet50 images that is 120 images' activations kept for backward, about
# 120 / 8 x 650 MB ≈ 10 GB by section 3's figures. On resnet50 it runs at concurrency 1 only.
IG_RESNET_MAX_CONCURRENCY = 1


@dataclass(frozen=True)
class Endpoint:
    """One kind of request: a model, an API and (ours) an explanation method header."""

    label: str
    model: str
    api: str
    method: str | None = None
    max_concurrency: int | None = None

    def allows(self, concurrency: int) -> bool:
        return self.max_concurrency is None or concurrency <= self.max_concurrency

    def shots(self, server: BenchServer, images: tuple[bytes, ...]) -> list[Shot]:
        headers = {"X-Explain-Method": self.method} if self.method else {}
        url = f"{server.url()}/{self.api}/{self.model}"
        return [Shot(url, image, headers) for image in images]


OURS_NONE = "ours, method=none"


def endpoints(served: Served) -> list[Endpoint]:
    """Cheapest first: the order of the warm-up/memory phase."""
    ig_limit = IG_RESNET_MAX_CONCURRENCY if served.name == "resnet50" else None
    return [
        Endpoint(OURS_NONE, served.name, "predictions", "none"),
        Endpoint("stock /predictions", served.stock_name, "predictions"),
        Endpoint("ours, method=gradcam", served.name, "predictions", "gradcam"),
        Endpoint("ours, method=guided_gradcam", served.name, "predictions", "guided_gradcam"),
        Endpoint("stock /explanations (IG)", served.stock_name, "explanations", max_concurrency=ig_limit),
    ]


@dataclass
class ModelRun:
    """Everything measured on one model's server."""

    served: Served
    memory: list[list[str]] = field(default_factory=list)
    windows: dict[tuple[str, int], list[Window]] = field(default_factory=lambda: defaultdict(list))
    load: LoadSummary | None = None


def _window(
    server: BenchServer, served: Served, endpoint: Endpoint, concurrency: int, seconds: float, settings: Settings
) -> Window:
    return run_window(
        endpoint.shots(server, served.images),
        concurrency,
        seconds,
        max_requests=settings.max_requests_per_window,
        cap_s=settings.slow_cap_s,
    )


def _warm_up_and_memory(server: BenchServer, run: ModelRun, settings: Settings) -> None:
    pids = {name: server.model_worker_pids(name)[0] for name in (run.served.name, run.served.stock_name)}
    for name, pid in pids.items():
        run.memory.append([name, "after start (model loaded)", megabytes(peak_rss(pid)), megabytes(rss(pid))])
    for endpoint in endpoints(run.served):
        concurrency = min(8, endpoint.max_concurrency or 8)
        window = _window(server, run.served, endpoint, concurrency, settings.warmup_window_s, settings)
        pid = pids[endpoint.model]
        run.memory.append(
            [
                endpoint.model,
                f"+ {endpoint.label} traffic (c={concurrency}, {window.completed} requests)",
                megabytes(peak_rss(pid)),
                megabytes(rss(pid)),
            ]
        )


def _interleaved(server: BenchServer, run: ModelRun, settings: Settings) -> None:
    for concurrency in settings.concurrencies:
        active = [e for e in endpoints(run.served) if e.allows(concurrency)]
        for round_index in range(settings.e2e_rounds):
            shift = round_index % len(active)
            for endpoint in active[shift:] + active[:shift]:
                run.windows[(endpoint.label, concurrency)].append(
                    _window(server, run.served, endpoint, concurrency, settings.window_s, settings)
                )


def measure(served: Served, store: Path, workdir: Path, settings: Settings) -> ModelRun:
    """Start the model's server, warm up (reading worker memory), run the interleaved windows, stop."""
    run = ModelRun(served)
    server = BenchServer(
        store,
        {served.name: served.mar, served.stock_name: served.stock_mar},
        workdir / f"e2e-{served.name}",
        env=WORKER_ENV,
    )
    try:
        server.start()
        with ForeignLoad() as load:
            _warm_up_and_memory(server, run, settings)
            _interleaved(server, run, settings)
        run.load = load.summary()
    finally:
        server.stop()
    return run


def _summary(run: ModelRun, label: str, concurrency: int) -> Summary:
    return Summary.of(run.windows[(label, concurrency)], run.windows[(OURS_NONE, concurrency)])


def _rows(run: ModelRun, settings: Settings) -> list[list[object]]:
    return [
        [concurrency, endpoint.label, *_summary(run, endpoint.label, concurrency).cells()]
        for concurrency in settings.concurrencies
        for endpoint in endpoints(run.served)
        if (endpoint.label, concurrency) in run.windows
    ]


def report(runs: list[ModelRun], settings: Settings) -> tuple[Section, list[str]]:
    """Section 2 and the worker-memory block of section 3."""
    section = Section(
        "2. End to end: TorchServe, batchSize 8, maxBatchDelay 50 ms, 1 worker, "
        + ", ".join(f"{k}={v}" for k, v in WORKER_ENV.items())
    )
    section.add(
        "Closed-loop load from threads on the same machine (they share its 2 cores with the server). "
        "req/s = all completed requests / time to the last answer, pooled over the rounds; ratios are "
        "to our method=none: per round (median, min–max; pairs cancel load drift) and of the best windows "
        "(verdicts: other load only ever lowers throughput); latencies over all requests. "
        f"Stock /explanations on resnet50 only at concurrency ≤ {IG_RESNET_MAX_CONCURRENCY} (see section 3)."
    )
    memory_rows: list[list[str]] = []
    for run in runs:
        assert run.load is not None
        section.add(
            f"### {run.served.name}: {run.load.describe()}",
            table(["concurrency", "endpoint", *Summary.HEADERS], _rows(run, settings)),
        )
        gradcam = {c: _summary(run, "ours, method=gradcam", c) for c in settings.concurrencies}
        section.targets.append(
            Target(
                f"end to end {run.served.name}: throughput gradcam / none",
                f"≥ {TARGET_RATIO:.2f}x",
                ", ".join(
                    f"c={c}: {s.best_ratio:.2f}x best window (median {statistics.median(s.ratios):.2f}x)"
                    for c, s in gradcam.items()
                ),
                min(s.best_ratio for s in gradcam.values()) >= TARGET_RATIO,
                run.load.disturbed,
            )
        )
        memory_rows += [[run.served.name, *row] for row in run.memory]
    memory = [
        "### TorchServe worker memory",
        "Peak RSS (VmHWM) of each Python worker, read after start and after each kind of traffic on "
        "fresh workers, cheapest first: each peak includes everything before it.",
        table(["model", "worker", "after", "peak RSS", "RSS now"], memory_rows),
    ]
    return section, memory
