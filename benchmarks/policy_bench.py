"""Section 9: cost control, explaining only some predictions, against method=none and explaining all.

Engine (batch 8, interleaved rounds, best times): the prediction alone, a method on every image,
and the same method under a policy that selects none or one of the 8 images (selected and
skipped rows are fixed by the policy, not drawn), so the cost of a skipped row is measured, not
assumed. End to end (a real TorchServe, our MAR with batchSize 8, one worker): closed-loop load
with method=none, with the method on every request, and with ``explain_rate=0.1`` (sampled by
the request id); the explain rate actually served is read back from the server's own
``ExplainDecisions`` metric on its metrics port.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

import handlers.serving
from handlers.engine import Explainer, Job
from handlers.engine.policy import ExplainPolicy
from handlers.inspection.samples import SAMPLES_DIR

from .artifacts import build_ours
from .cases import BATCH, cases
from .e2e_bench import WORKER_ENV
from .load import Shot, Summary, Window, run_window
from .monitor import ForeignLoad
from .report import Section, Target, table
from .server import BenchServer
from .settings import Settings
from .timing import calibrate_repeat, interleave

METHODS = ("gradcam", "guided_gradcam")
COSTLY = "guided_gradcam"  # the method whose explain-all cost is large enough to judge the savings on
RATE = 0.1
SKIPPED_GOAL = 1.05  # a batch whose rows are all skipped, against the prediction alone
SAVED_GOAL = 0.75  # share of the explain-all extra time per request that a 10% rate saves (end to end)
METRICS_YAML = Path(handlers.serving.__file__).parent / "metrics.yaml"
NONE = "method=none"


def _policy_jobs(method: str, selected: int) -> list[Job]:
    """``BATCH`` jobs of ``method`` whose policy selects exactly the first ``selected`` images."""
    always, never = ExplainPolicy(rate=1.0), ExplainPolicy(below=0.0)
    return [Job(method, policy=always if i < selected else never) for i in range(BATCH)]


def _call(explainer: Explainer, images: torch.Tensor, jobs: list[Job]) -> Callable[[], object]:
    return lambda: explainer.explain(images, jobs)


def _engine(settings: Settings, section: Section) -> None:
    threads = torch.get_num_threads()
    clock = "CPU" if threads == 1 else "wall"
    rows = []
    for case in cases(settings.engine_models):
        explainer = Explainer(case.model, case.input_size)
        images = case.images()
        calls = {NONE: _call(explainer, images, [Job("none")] * BATCH)}
        for method in METHODS:
            calls[f"{method}, all 8"] = _call(explainer, images, [Job(method)] * BATCH)
            calls[f"{method}, policy selects 1 of 8"] = _call(explainer, images, _policy_jobs(method, 1))
            calls[f"{method}, policy selects 0 of 8"] = _call(explainer, images, _policy_jobs(method, 0))
        repeat = calibrate_repeat(calls[NONE], settings.engine_min_call_s)
        wall, cpu = interleave(
            calls,
            **settings.engine_rounds,
            repeat=repeat,
        )
        deciding = cpu if threads == 1 else wall
        for name in calls:
            best = deciding.best_ratio(name, NONE)
            rows.append([case.name, name, f"{min(deciding.seconds[name]) * 1e3:.1f}", f"{best:.2f}x"])
        skipped = deciding.best_ratio(f"{COSTLY}, policy selects 0 of 8", NONE)
        section.targets.append(
            Target(
                f"{case.name}: {COSTLY}, batch with every image skipped vs method=none",
                f"≤ {SKIPPED_GOAL:.2f}x",
                f"{skipped:.2f}x best {clock} time",
                skipped <= SKIPPED_GOAL,
            )
        )
    section.add(
        f"### Engine, batch {BATCH}, {threads} thread(s): best {clock} times over interleaved rounds",
        table(["model", "path", f"best {clock} ms per batch", "vs method=none"], rows),
    )


def _endpoints(model: str, server: BenchServer, images: tuple[bytes, ...]) -> dict[str, list[Shot]]:
    url = f"{server.url()}/predictions/{model}"

    def shots(**headers: str) -> list[Shot]:
        return [Shot(url, image, headers) for image in images]

    endpoints = {NONE: shots(**{"X-Explain-Method": "none"})}
    for method in METHODS:
        endpoints[f"{method}, every request"] = shots(**{"X-Explain-Method": method})
        endpoints[f"{method}, explain_rate={RATE:g}"] = shots(
            **{"X-Explain-Method": method, "X-Explain-Explain-Rate": str(RATE)}
        )
    return endpoints


def _served_rate(server: BenchServer, method: str) -> float:
    """Explained / decided requests of ``method``, from the server's ExplainDecisions counter."""
    text = requests.get(f"{server.url('metrics')}/metrics", timeout=30).text
    counts = {"explained": 0.0, "skipped": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ExplainDecisions") and sample.labels.get("Method") == method:
                counts[sample.labels["Decision"]] += sample.value
    total = counts["explained"] + counts["skipped"]
    return counts["explained"] / total if total else 0.0


def _end_to_end(settings: Settings, workdir: Path, section: Section) -> None:
    store = workdir / "policy-store"
    store.mkdir(parents=True, exist_ok=True)
    images = tuple(p.read_bytes() for p in sorted(SAMPLES_DIR.glob("*.png")))
    mar = build_ours(store, "inspection", "inspection", None)
    config = {"metrics_mode": "prometheus", "metrics_config": str(METRICS_YAML)}
    server = BenchServer(store, {"inspection": mar}, workdir / "policy-server", config, env=WORKER_ENV)
    windows: dict[tuple[str, int], list[Window]] = {}
    try:
        server.start()
        endpoints = _endpoints("inspection", server, images)
        with ForeignLoad() as load:
            for shots in endpoints.values():  # warm-up, cheapest first
                run_window(shots, 8, settings.warmup_window_s, max_requests=settings.max_requests_per_window)
            for concurrency in settings.concurrencies:
                for round_index in range(settings.e2e_rounds):
                    names = list(endpoints)
                    shift = round_index % len(names)
                    for name in names[shift:] + names[:shift]:
                        window = run_window(
                            endpoints[name],
                            concurrency,
                            settings.window_s,
                            max_requests=settings.max_requests_per_window,
                            cap_s=settings.slow_cap_s,
                        )
                        windows.setdefault((name, concurrency), []).append(window)
        served = {method: _served_rate(server, method) for method in METHODS}
    finally:
        server.stop()
    summary = load.summary()
    rows = []
    for concurrency in settings.concurrencies:
        for name in endpoints:
            result = Summary.of(windows[(name, concurrency)], windows[(NONE, concurrency)])
            rows.append([concurrency, name, *result.cells()])
        reference = windows[(NONE, concurrency)]
        every = Summary.of(windows[(f"{COSTLY}, every request", concurrency)], reference)
        sampled = Summary.of(windows[(f"{COSTLY}, explain_rate={RATE:g}", concurrency)], reference)
        # Time per request relative to method=none, from the best windows (other load only lowers
        # throughput): explaining every request adds 1/every - 1; the sampled rate saves part of it.
        extra = 1 / every.best_ratio - 1
        saved = (1 / every.best_ratio - 1 / sampled.best_ratio) / extra if extra > 0 else 0.0
        section.targets.append(
            Target(
                f"end to end inspection c={concurrency}: {COSTLY} at explain_rate={RATE:g}, "
                "share of explain-all's extra time per request saved",
                f"≥ {SAVED_GOAL:.2f}",
                f"{saved:.2f} (best windows: {sampled.best_ratio:.2f}x of none's throughput, all "
                f"{every.best_ratio:.2f}x; served rate {served[COSTLY]:.3f})",
                saved >= SAVED_GOAL,
                summary.disturbed,
            )
        )
    section.add(
        f"### End to end: inspection, batchSize 8, 1 worker, {', '.join(f'{k}={v}' for k, v in WORKER_ENV.items())}; "
        f"{summary.describe()}",
        "Ratios are to method=none, as in section 2. Explain rate actually served (ExplainDecisions on the "
        "metrics port, all windows and the warm-up): "
        + ", ".join(f"{method} {rate:.3f}" for method, rate in served.items())
        + ".",
        table(["concurrency", "endpoint", *Summary.HEADERS], rows),
    )


def run(settings: Settings, workdir: Path) -> Section:
    """Section 9: the engine part, then the end-to-end part on its own server."""
    section = Section(f"9. Cost control: explaining {RATE:.0%} of predictions vs none vs all")
    section.add(
        "A policy explains an image only when a rule selects it (here a sampling rate); the others get the "
        "prediction alone. Grad-CAM decides inside its own forward (a skipped row gets no target, so no map); "
        "Guided Grad-CAM predicts the batch in inference mode, then runs on the selected rows only (a selected "
        "row pays that forward again). Goals, judged on Guided Grad-CAM (Grad-CAM already costs about a "
        "prediction, so there is little to save): a batch of skipped rows costs what method=none costs, and "
        f"at a {RATE:.0%} rate a request saves at least {SAVED_GOAL:.0%} of the time explaining every request "
        "adds (best windows, as section 2's verdicts)."
    )
    _engine(settings, section)
    _end_to_end(settings, workdir, section)
    return section
