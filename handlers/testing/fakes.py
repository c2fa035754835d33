"""A small honest stand-in for the worker: TorchServe's real Context, a metrics recorder.

Handlers under test get ``ts.context.Context`` and ``RequestProcessor`` objects exactly
as TorchServe's ``Service.predict`` builds them; only metrics are recorded in memory.
``run_batch`` drives a handler through one batch and reads back each request's status.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from ts.context import Context, RequestProcessor

if TYPE_CHECKING:
    from handlers.serving.handler import GradCamHandler


class RecordedMetric:
    """A metric of the cache: each update appended as (name, value, dimension values)."""

    def __init__(self, name: str, sink: list[tuple[str, float, list[str]]]) -> None:
        self.name = name
        self.sink = sink

    def add_or_update(self, value: float, dimension_values: list[str], request_id: str = "") -> None:
        self.sink.append((self.name, value, list(dimension_values)))


class RecordingMetrics:
    """Collects what the handler reports, instead of emitting TorchServe metric lines."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float, str]] = []
        self.values: list[tuple[str, float, list[str]]] = []  # cached metrics' updates

    def add_time(self, name: str, value: float, idx: Any = None, unit: str = "ms") -> None:
        self.times.append((name, value, unit))

    def get_metric(self, metric_name: str, metric_type: Any = None) -> RecordedMetric:
        return RecordedMetric(metric_name, self.values)


def unpack_mar(mar: Path, destination: Path) -> Path:
    """Extract a MAR like TorchServe does into its model directory."""
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(destination)
    return destination


def load_context(model_dir: Path, model_name: str = "model", gpu: int | None = None) -> Context:
    """The Context a worker builds when it loads the model in ``model_dir``."""
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    config_file = manifest["model"].get("configFile")
    yaml_config = yaml.safe_load((model_dir / config_file).read_text()) if config_file else {}
    return Context(
        model_name,
        str(model_dir),
        manifest,
        yaml_config.get("batchSize", 1),
        gpu,
        "0.12.0",
        metrics=RecordingMetrics(),
        model_yaml_config=yaml_config,
    )


def with_requests(context: Context, headers: list[dict[str, str]]) -> Context:
    """Attach one request processor per request of the next batch, as Service.predict does."""
    context.request_processor = [RequestProcessor(dict(h)) for h in headers]
    context.request_ids = {i: f"req-{i}" for i in range(len(headers))}
    return context


def run_batch(
    handler: GradCamHandler, rows: list[Any], headers: list[dict[str, str]] | None = None
) -> tuple[list[int], list[Any], Context]:
    """Handle ``rows`` as one batch: each request's HTTP status, its decoded JSON answer, the Context."""
    context = with_requests(handler.context, headers or [{} for _ in rows])
    output = handler.handle(rows, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(rows))]
    return statuses, [json.loads(body) for body in output], context
