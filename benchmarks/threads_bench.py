"""Thread settings of TorchServe workers on a 2-core machine, compared side by side.

What TorchServe 0.12 does (read from ts/ and model-server.jar): the frontend starts each
Python worker with its own environment (System.getenv()) plus PYTHONPATH; it sets
OMP_NUM_THREADS only for torchrun (parallelType) models, and pins cores only with
``cpu_launcher_enable`` (Intel's torch.backends.xeon.run_cpu). So a plain worker runs
torch with its default: one intra-op thread per core, 2 here, in *every* worker. Our
handler therefore sets one torch thread unless OMP_NUM_THREADS (or the MAR's
``torch_threads``) says otherwise, and config.properties runs one worker per core; the
"torch default" row sets OMP_NUM_THREADS=2 to show what that replaced.
``number_of_netty_threads`` / ``netty_client_threads`` default to 0 = Netty's choice
(2 x cores). All configurations run at once, each on its own TorchServe, and windows
alternate between them round by round, so they see the same background load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .artifacts import Served, build_ours, random_weights
from .load import Shot, Summary, Window, run_window
from .monitor import ForeignLoad
from .report import Section, table
from .server import BenchServer
from .settings import Settings


@dataclass(frozen=True)
class ThreadConfig:
    """One way to run the server: environment for its workers, config.properties keys, workers per model."""

    label: str
    env: dict[str, str] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)
    workers: int = 1


CONFIGS = {
    "default": ThreadConfig(
        "torch default: 1 worker, 2 threads (OMP_NUM_THREADS=2), Netty default threads", {"OMP_NUM_THREADS": "2"}
    ),
    "omp1": ThreadConfig("OMP_NUM_THREADS=1, 1 worker", {"OMP_NUM_THREADS": "1"}),
    "omp1_2workers": ThreadConfig(
        "shipped: 2 workers, 1 thread each (OMP_NUM_THREADS=1)", {"OMP_NUM_THREADS": "1"}, workers=2
    ),
    "netty1": ThreadConfig(
        "number_of_netty_threads=1, netty_client_threads=1, 1 worker",
        config={"number_of_netty_threads": "1", "netty_client_threads": "1"},
    ),
    "omp1_netty1": ThreadConfig(
        "OMP_NUM_THREADS=1, number_of_netty_threads=1, netty_client_threads=1, 1 worker",
        {"OMP_NUM_THREADS": "1"},
        {"number_of_netty_threads": "1", "netty_client_threads": "1"},
    ),
    "omp2_passive": ThreadConfig(
        "OMP_NUM_THREADS=2, OMP_WAIT_POLICY=PASSIVE, 1 worker", {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    ),
}
METHOD = "gradcam"


def _model_names(served: dict[str, Served], config: ThreadConfig, models: tuple[str, ...]) -> dict[str, str]:
    """{model: name served under} for one configuration."""
    return {
        model: served[model].name if config.workers == 1 else f"{served[model].name}_w{config.workers}"
        for model in models
    }


def _start_all(
    servers: dict[str, BenchServer], served: dict[str, Served], store: Path, workdir: Path, settings: Settings
) -> None:
    """Start one server per configuration into ``servers`` (filled as they start, so all get stopped)."""
    for key in settings.thread_configs:
        config = CONFIGS[key]
        names = _model_names(served, config, settings.thread_models)
        for model, name in names.items():
            if config.workers > 1 and not (store / f"{name}.mar").exists():
                build_ours(store, model, name, random_weights(store, model), workers=config.workers)
        server = BenchServer(
            store,
            {name: f"{name}.mar" for name in names.values()},
            workdir / f"threads-{key}",
            config.config,
            config.env,
        )
        servers[key] = server.start(wait_ready=False)
    for server in servers.values():
        server.wait_ready(900)


def _worker_env(server: BenchServer, name: str) -> str:
    pids = server.model_worker_pids(name)
    values = {psutil.Process(pid).environ().get("OMP_NUM_THREADS", "unset") for pid in pids}
    return f"{len(pids)} × OMP_NUM_THREADS={'/'.join(sorted(values))}"


def _measure(
    servers: dict[str, BenchServer], served: dict[str, Served], settings: Settings
) -> dict[tuple[str, str], list[Window]]:
    """Round 0 warms every worker up; then each round gives every (configuration, model) one window."""
    windows: dict[tuple[str, str], list[Window]] = {}
    keys = list(servers)
    for round_index in range(settings.thread_rounds + 1):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            for model, name in _model_names(served, CONFIGS[key], settings.thread_models).items():
                url = f"{servers[key].url()}/predictions/{name}"
                shots = [Shot(url, image, {"X-Explain-Method": METHOD}) for image in served[model].images]
                window = run_window(
                    shots,
                    settings.thread_concurrency,
                    settings.window_s if round_index else settings.warmup_window_s,
                    max_requests=settings.max_requests_per_window,
                )
                if round_index:
                    windows.setdefault((key, model), []).append(window)
    return windows


def run(served: dict[str, Served], store: Path, workdir: Path, settings: Settings) -> Section:
    section = Section(f"4. Thread settings (method={METHOD}, concurrency {settings.thread_concurrency})")
    servers: dict[str, BenchServer] = {}
    try:
        _start_all(servers, served, store, workdir, settings)
        workers = {
            (key, model): _worker_env(servers[key], name)
            for key in servers
            for model, name in _model_names(served, CONFIGS[key], settings.thread_models).items()
        }
        with ForeignLoad() as load:
            windows = _measure(servers, served, settings)
    finally:
        for server in servers.values():
            server.stop()
    section.add(
        __doc__.split("\n\n", 1)[1].replace("\n", " "),
        f"Rounds: {settings.thread_rounds}, windows of {settings.window_s:.0f} s; {load.summary().describe()}. "
        "Ratios are to the torch-default configuration.",
    )
    rows, best = [], []
    for model in settings.thread_models:
        summaries = {key: Summary.of(windows[(key, model)], windows[("default", model)]) for key in servers}
        rows += [
            [model, CONFIGS[key].label, workers[(key, model)], *summary.cells()] for key, summary in summaries.items()
        ]
        fastest = max(summaries, key=lambda key: summaries[key].rps)
        best.append(f"{model}: {CONFIGS[fastest].label} ({summaries[fastest].rps:.1f} req/s)")
    section.add(
        table(["model", "configuration", "workers (verified)", *Summary.HEADERS], rows),
        "Highest throughput here: " + "; ".join(best) + ".",
    )
    return section
