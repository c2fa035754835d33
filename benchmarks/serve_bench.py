"""End to end as `make serve` runs it (section 13): Grad-CAM vs method=none vs stock, and where
the per-request time goes inside the worker.

One server with the repository's settings (2 workers per model, batchSize 8, maxBatchDelay 50
ms, one torch thread per worker) hosts the default MAR and the stock ``image_classifier`` MAR
of the same weights (also 2 workers). 224 px JPEGs at concurrency 16, windows of each endpoint
in rotating order; the verdicts use the median of the per-round ratios. The server has `make
serve`'s metrics (Prometheus mode, the handler's YAML) and Netty settings. The worker profile runs
both handlers in this process on TorchServe's real Context and metrics cache, serialisation
included: CPU time per request of each stage, stock next to ours.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.protocol.otf_message_handler import create_predict_response

import handlers.serving
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
METRICS_YAML = Path(handlers.serving.__file__).parent / "metrics.yaml"
# config.properties' settings that shape serving (`make serve`): the handler's metrics in Prometheus
# mode (every [METRICS] line of a worker is parsed by the frontend), two Netty threads each side.
MAKE_SERVE_CONFIG = {
    "metrics_mode": "prometheus",
    "metrics_config": str(METRICS_YAML),
    "number_of_netty_threads": "2",
    "netty_client_threads": "2",
    "job_queue_size": "100",
}
BATCHES_PER_ROUND = 5
GOALS = {"gradcam / none": 0.97, "none / stock": 1.00}
ENDPOINTS = ("ours, method=none", "ours, method=gradcam", "stock /predictions")


def images() -> tuple[bytes, ...]:
    return photo_like_jpegs(4, (224, 224))


def shots(url: str, endpoint: str, bodies: tuple[bytes, ...]) -> list[Shot]:
    if endpoint.startswith("stock"):
        return [Shot(f"{url}/predictions/stock_inspection", body) for body in bodies]
    method = endpoint.rsplit("=", 1)[1]
    return [Shot(f"{url}/predictions/inspection", body, {"X-Explain-Method": method}) for body in bodies]


def worker_usage(pids: list[int]) -> tuple[int, float]:
    """Minor page faults and CPU seconds the processes ``pids`` have used so far (/proc, Linux)."""
    faults, seconds = 0, 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        faults += int(fields[7])  # minflt
        seconds += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return faults, seconds


def end_to_end(
    store: Path, workdir: Path, settings: Settings, rounds: int
) -> tuple[dict[str, list[Window]], dict[str, tuple[int, float]]]:
    """Windows of every endpoint, ``rounds`` times in rotating order, after one warm-up each; and the
    page faults and CPU seconds its model's workers spent during them."""
    ours = build_ours(store, "inspection", "inspection", None, workers=WORKERS)
    stock = build_stock(store, "inspection", "stock_inspection", WEIGHTS_FILE, workers=WORKERS)
    bodies = images()
    windows: dict[str, list[Window]] = {e: [] for e in ENDPOINTS}
    usage = dict.fromkeys(ENDPOINTS, (0, 0.0))
    models = {"inspection": ours, "stock_inspection": stock}
    with BenchServer(store, models, workdir / "serve", MAKE_SERVE_CONFIG, env={"OMP_NUM_THREADS": "1"}) as server:
        pids = {model: server.worker_pids(model) for model in models}
        workers = {e: pids["stock_inspection" if e.startswith("stock") else "inspection"] for e in ENDPOINTS}
        for endpoint in ENDPOINTS:
            run_window(shots(server.url(), endpoint, bodies), CONCURRENCY, settings.warmup_window_s, max_requests=10**6)
        for r in range(rounds):
            for endpoint in ENDPOINTS[r % 3 :] + ENDPOINTS[: r % 3]:
                before = worker_usage(workers[endpoint])
                window = run_window(
                    shots(server.url(), endpoint, bodies), CONCURRENCY, settings.window_s, max_requests=10**6
                )
                after = worker_usage(workers[endpoint])
                windows[endpoint].append(window)
                spent = usage[endpoint]
                usage[endpoint] = (spent[0] + after[0] - before[0], spent[1] + after[1] - before[1])
    return windows, usage


def paired(windows: dict[str, list[Window]], name: str, reference: str) -> list[float]:
    return [a.rps / b.rps for a, b in zip(windows[name], windows[reference], strict=True) if b.rps]


STAGES = ("preprocess", "inference", "postprocess")
STAGE_ROWS = {
    "preprocess": "read and decode (stock: + its tensor stack)",
    "inference": "engine (ours: + the batch tensor)",
    "postprocess": "answer: top-k, JSON (ours), metrics",
    "other": "rest of handle (KServe unfold/fold, HandlerTime)",
    "serialise": "worker's serialisation (stock: its JSON)",
}
PROFILED = ("stock /predictions", "ours, method=none", "ours, method=gradcam")


@contextmanager
def _stage(spent: dict[str, float], stage: str) -> Iterator[None]:
    """Adds the block's CPU time to ``spent[stage]``."""
    began = time.process_time()
    yield
    spent[stage] += time.process_time() - began


class _Timed:
    """A handler whose stages (and whole ``handle``) add their CPU time to ``spent``."""

    def __init__(self, handler: Any, context: Any, headers: dict[str, str]) -> None:
        self.handler, self.context, self.headers = handler, context, headers
        self.spent: dict[str, float] = dict.fromkeys((*STAGES, "other", "serialise"), 0.0)
        for stage in STAGES:
            setattr(handler, stage, self._timed(getattr(handler, stage), stage))

    def _timed(self, method: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            with _stage(self.spent, stage):
                return method(*args)

        return timed

    def batch(self, bodies: list[bytes]) -> float:
        """One batch as the worker runs it, ``Service.predict``'s serialisation included; its CPU seconds."""
        context = with_requests(self.context, [dict(self.headers) for _ in bodies])
        ids = {i: f"{i:08d}-0000-4000-8000-000000000000" for i in range(len(bodies))}
        context.request_ids = context.metrics.request_ids = ids
        began = time.process_time()
        before = sum(self.spent[stage] for stage in STAGES)
        output = self.handler.handle([{"body": bytearray(body)} for body in bodies], context)
        self.spent["other"] += time.process_time() - began - (sum(self.spent[stage] for stage in STAGES) - before)
        with _stage(self.spent, "serialise"):
            create_predict_response(output, ids, "Prediction success", 200, context)
        return time.process_time() - began


def _worker_context(mar: Path, name: str, into: Path) -> Any:
    """The Context a worker of ``make serve`` gives the model: TorchServe's metrics cache on our YAML."""
    context = load_context(unpack_mar(mar, into), name)
    cache = MetricsCacheYamlImpl(config_file_path=str(METRICS_YAML))
    cache.initialize_cache()
    context.metrics = cache
    return context


def _stock_handler(model_dir: Path) -> Any:
    """The stock MAR's handler class, imported from its model directory as the worker does."""
    spec = importlib.util.spec_from_file_location("stock_inspection_classifier", model_dir / "inspection_classifier.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.InspectionImageClassifier()


@contextmanager
def _worker_logging() -> Iterator[None]:
    """INFO records formatted and written as a worker writes them to its stdout (here to /dev/null, and
    only there: this process's own log handlers are set aside meanwhile)."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    with open(os.devnull, "w", encoding="utf-8") as sink:
        worker = logging.StreamHandler(sink)
        worker.setFormatter(logging.Formatter("%(message)s"))
        root.handlers[:] = [worker]
        root.setLevel(logging.INFO)
        try:
            yield
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)


@dataclass
class WorkerProfile:
    """What ``stage_profile`` measured: the stage table, and stock's CPU per request over ours (none)."""

    rows: list[list[str]]
    interleaved: list[float]  # per round, every handler with our worker's allocator settings
    own_allocator: float  # stock measured first, with glibc's defaults as in its own worker
    stock_faults: tuple[float, float]  # page faults per request: glibc's defaults, then ours


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def stage_profile(store: Path, ours: str, stock: str, rounds: int) -> WorkerProfile:
    """CPU ms per request of each stage, stock vs ours (none, gradcam); run it in a fresh process.

    Batches of 8 224 px JPEGs through each handler's ``handle`` on TorchServe's Context with its
    metrics cache, then ``Service.predict``'s serialisation, with records written as a worker
    writes them: everything the worker does per batch. Stock runs alone first, with glibc's
    allocator defaults as in its own worker; our handler then sets its worker's (process-wide,
    see handlers/memory.py) and all three run in interleaved rounds.
    """
    torch.set_num_threads(1)  # as the worker
    with tempfile.TemporaryDirectory(prefix="serve-profile-") as tmp, _worker_logging():
        stock_context = _worker_context(store / stock, "stock_inspection", Path(tmp) / "stock")
        stock_handler = _stock_handler(Path(tmp) / "stock")
        sys.path.insert(0, str(Path(tmp) / "stock"))  # its model file, as the worker's model directory
        try:
            stock_handler.initialize(stock_context)
        finally:
            sys.path.remove(str(Path(tmp) / "stock"))
        pictures = images()
        bodies = [pictures[i % len(pictures)] for i in range(8)]
        alone = _Timed(stock_handler, stock_context, {})
        for _ in range(BATCHES_PER_ROUND):  # warm-up
            alone.batch(bodies)
        faults = _page_faults()
        alone_seconds = sum(alone.batch(bodies) for _ in range(rounds * BATCHES_PER_ROUND))
        default_faults = _page_faults() - faults
        cases = {PROFILED[0]: alone}
        for name, method in zip(PROFILED[1:], ("none", "gradcam"), strict=True):  # a worker each: own timers
            context = _worker_context(store / ours, "inspection", Path(tmp) / method)
            handler = GradCamHandler()
            handler.initialize(context)
            cases[name] = _Timed(handler, context, {"X-Explain-Method": method})
        for case in cases.values():  # warm-up, then forget it
            for _ in range(BATCHES_PER_ROUND):
                case.batch(bodies)
            case.spent = dict.fromkeys(case.spent, 0.0)
        totals: dict[str, list[float]] = {name: [] for name in cases}
        faults, stock_faults = _page_faults(), 0
        for r in range(rounds):
            for name in PROFILED[r % 3 :] + PROFILED[: r % 3]:
                before = _page_faults()
                totals[name].append(sum(cases[name].batch(bodies) for _ in range(BATCHES_PER_ROUND)))
                stock_faults += _page_faults() - before if name == PROFILED[0] else 0
    requests = rounds * BATCHES_PER_ROUND * len(bodies)
    rows = [
        [label, *(f"{cases[name].spent[stage] / requests * 1e3:.3f}" for name in PROFILED)]
        for stage, label in STAGE_ROWS.items()
    ]
    rows.append(["total", *(f"{sum(cases[name].spent.values()) / requests * 1e3:.3f}" for name in PROFILED)])
    return WorkerProfile(
        rows,
        [s / o for s, o in zip(totals[PROFILED[0]], totals[PROFILED[1]], strict=True) if o],
        alone_seconds / max(sum(totals[PROFILED[1]]), 1e-12),
        (default_faults / requests, stock_faults / requests),
    )


def profile_in_fresh_process(store: Path, ours: str, stock: str, rounds: int) -> WorkerProfile:
    """``stage_profile`` in a new interpreter: glibc's defaults untouched by earlier sections or our handler."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(stage_profile, (store, ours, stock, rounds))


def run(settings: Settings, workdir: Path) -> Section:
    quick = settings.name == "quick"
    rounds = 2 if quick else 7
    store = workdir / "serve-store"
    store.mkdir(parents=True, exist_ok=True)
    section = Section("13. End to end in the `make serve` configuration, and the worker's per-request time")
    ours = build_ours(store, "inspection", "profiled", None)
    stock = build_stock(store, "inspection", "stock_profiled", WEIGHTS_FILE)
    profile = profile_in_fresh_process(store, ours, stock, 6 if quick else 30)
    with ForeignLoad() as load:
        windows, usage = end_to_end(store, workdir, settings, rounds)
    summary = load.summary()
    ratios = {
        "gradcam / none": paired(windows, "ours, method=gradcam", "ours, method=none"),
        "none / stock": paired(windows, "ours, method=none", "stock /predictions"),
    }
    rows = []
    for endpoint, measured in windows.items():
        done = sum(w.completed for w in measured)
        rps = done / max(sum(w.elapsed_s for w in measured), 1e-9)
        faults, seconds = usage[endpoint]
        rows.append(
            [
                endpoint,
                f"{rps:.1f}",
                str(done),
                str(sum(w.errors for w in measured)),
                f"{seconds / max(done, 1) * 1e3:.2f}",
                f"{faults / max(done, 1):.0f}",
            ]
        )
    section.add(
        f"{WORKERS} workers per model (OMP_NUM_THREADS=1), batchSize 8, maxBatchDelay 50 ms; 224 px JPEGs at "
        f"concurrency {CONCURRENCY}; {rounds} rounds of {settings.window_s:g} s windows per endpoint in rotating "
        f"order. During this section {summary.describe()}. The workers' CPU time and minor page faults are "
        "read from /proc for each window (the frontend's share is not in them).",
        table(
            ["endpoint", "req/s (pooled)", "requests", "errors", "workers' CPU ms / request", "page faults / request"],
            rows,
        ),
        table(
            ["ratio", "median of paired rounds", "rounds (min–max)"],
            [
                [name, f"{statistics.median(values):.3f}x", f"{min(values):.2f}–{max(values):.2f}"]
                for name, values in ratios.items()
                if values
            ],
        ),
        "Inside the worker: each handler in one fresh process on TorchServe's Context and metrics cache (our "
        "metrics YAML), log records written as a worker writes them, then the worker's serialisation of the "
        f"answers; batches of 8, {BATCHES_PER_ROUND} per round, rounds interleaved; CPU ms per request (the "
        "frontend's share is not in it):",
        table(["stage", *PROFILED], profile.rows),
        "Worker CPU per request, stock / ours with method=none (above 1: ours is cheaper): "
        f"{statistics.median(profile.interleaved):.3f}x in the table (median of {len(profile.interleaved)} paired "
        f"rounds, {min(profile.interleaved):.2f}–{max(profile.interleaved):.2f}), where stock shares the glibc "
        "thresholds our handler sets in its worker (handlers/memory.py), i.e. the handlers' own code; "
        f"{profile.own_allocator:.3f}x with stock measured first, as its own worker runs, with glibc's defaults "
        f"({profile.stock_faults[0]:.0f} page faults per request there, {profile.stock_faults[1]:.0f} with ours).",
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
