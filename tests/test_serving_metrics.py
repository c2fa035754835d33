"""The handler's metrics: declared in metrics.yaml as emitted, through TorchServe's own metrics cache."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
import yaml
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.metrics.metric_type_enum import MetricTypes

import handlers.serving
from handlers.serving.errors import RequestError
from handlers.serving.handler import GradCamHandler
from handlers.serving.metrics import REASONS, SPECS, ServingMetrics, refusal_reason
from handlers.testing.fakes import load_context, run_batch, unpack_mar
from handlers.testing.images import image_bytes
from handlers.testing.mars import build_custom_mar
from handlers.testing.torchserve import read_properties

METRICS_YAML = Path(handlers.serving.__file__).parent / "metrics.yaml"
TS_DEFAULT_YAML = Path(yaml.__file__).parents[1] / "ts" / "configs" / "metrics.yaml"


def test_yaml_declares_what_the_handler_emits_and_keeps_torchserves_defaults():
    ours, default = yaml.safe_load(METRICS_YAML.read_text()), yaml.safe_load(TS_DEFAULT_YAML.read_text())
    assert ours["ts_metrics"] == default["ts_metrics"]
    for kind, metrics in default["model_metrics"].items():
        assert all(metric in ours["model_metrics"][kind] for metric in metrics)
    declared = {
        metric["name"]: (metric["unit"], tuple(metric["dimensions"]), MetricTypes(kind))
        for kind, metrics in ours["model_metrics"].items()
        for metric in metrics
    }
    for name, (unit, dimensions, kind) in SPECS.items():
        assert declared[name] == (unit, ("ModelName", *dimensions), kind)


def test_emits_metric_lines_through_torchserves_cache(caplog):
    cache = MetricsCacheYamlImpl(str(METRICS_YAML))
    cache.initialize_cache()
    metrics = ServingMetrics(cache, "tiny")
    with caplog.at_level(logging.INFO):
        for name in SPECS:
            metrics._emit(name, 2, *(f"v{i}" for i in range(len(SPECS[name][1]))))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]")]
    assert len(lines) == len(SPECS)
    assert any(
        line.startswith("[METRICS]ExplanationLatencySeconds.Seconds:2|#ModelName:tiny,Method:v0|#type:HISTOGRAM")
        for line in lines
    )
    assert any(
        line.startswith("[METRICS]ExplainRequests.Count:2|#ModelName:tiny,Method:v0,Status:v1") for line in lines
    )


def _lines(records: list[logging.LogRecord]) -> list[str]:
    """The [METRICS] lines of log records, each without its timestamp (the part after the last comma)."""
    return [
        line.rsplit(",", 1)[0]
        for record in records
        for line in record.getMessage().splitlines()
        if line.startswith("[METRICS]")
    ]


def test_a_batch_is_one_record_of_the_lines_torchserve_writes(caplog):
    """One log record per batch, each line what TorchServe's own CachingMetric writes for that update."""
    cache = MetricsCacheYamlImpl(str(METRICS_YAML))
    cache.initialize_cache()
    updates = [
        ("BatchSize", 3, ()),
        ("ExplanationLatencySeconds", 0.0125, ("gradcam",)),
        ("ExplanationLatencySeconds", 0.0125, ("gradcam",)),
        ("ExplainTargets", 2, ("gradcam",)),
        ("ExplainRequests", 2, ("gradcam", "200")),
        ("RefusedRequests", 1, ("option",)),
        ("ExplainDecisions", 1, ("gradcam", "skipped", "confident")),
    ]
    with caplog.at_level(logging.INFO):
        ServingMetrics(cache, "tiny")._emit_all(updates)
    ours = caplog.records[:]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for name, value, labels in updates:
            cache.get_metric(name, SPECS[name][2]).add_or_update(value, ["tiny", *labels])
    assert len(ours) == 1 and len(caplog.records) == len(updates)
    assert _lines(ours) == _lines(caplog.records)


def test_a_failing_metrics_cache_never_fails_the_batch(caplog):
    class Broken:
        def get_metric(self, *args):
            raise RuntimeError("metrics backend down")

    metrics = ServingMetrics(Broken(), "tiny")
    metrics.record([RequestError(400, "x")], [RequestError(400, "x")], [RequestError(400, "x")], 0.1)
    metrics.record([RequestError(400, "x")], [RequestError(400, "x")], [RequestError(400, "x")], 0.1)
    assert sum("emitting metrics failed" in r.getMessage() for r in caplog.records) == 1


def test_every_refusal_has_a_reason_from_the_fixed_set():
    assert refusal_reason(RequestError(413, "big")) == "image_too_large"
    assert refusal_reason(RequestError(422, "scans", "decode_limit")) == "decode_limit"
    assert refusal_reason(RequestError(400, "free text here", "not-a-reason")) == "payload"
    assert refusal_reason(RequestError(418, "teapot")) == "other"
    assert all(refusal_reason(RequestError(status, "")) in REASONS for status in range(400, 600))


@pytest.fixture(scope="module")
def handler(tmp_path_factory) -> GradCamHandler:
    work = tmp_path_factory.mktemp("tiny")
    handler = GradCamHandler()
    handler.initialize(load_context(unpack_mar(build_custom_mar(work), work / "model"), "tiny"))
    return handler


def test_a_batch_reports_methods_statuses_reasons_targets_and_its_size(handler):
    image = base64.b64encode(image_bytes(1)).decode()
    rows = [
        {"body": {"data": image, "target": "cat,dog"}},
        {"body": {"data": image, "method": "guided_gradcam"}},
        {"body": {"data": image, "method": "lime"}},
        {"body": bytearray(b"not an image")},
        {"body": {"data": image, "top_k_explanations": 3, "target": "cat"}},
    ]
    statuses, _, context = run_batch(handler, rows)
    assert statuses == [200, 200, 400, 415, 400]
    values = context.metrics.values
    by_name: dict[str, list[tuple[float, list[str]]]] = {}
    for name, value, labels in values:
        assert labels[0] == "tiny"
        by_name.setdefault(name, []).append((value, labels[1:]))
    assert by_name["BatchSize"] == [(5, [])]
    # counters: one line per label set, its requests added up
    assert sorted((labels, count) for count, labels in by_name["ExplainRequests"]) == [
        (["gradcam", "200"], 1),
        (["guided_gradcam", "200"], 1),
        (["unknown", "400"], 2),
        (["unknown", "415"], 1),
    ]
    assert sorted((labels, count) for count, labels in by_name["RefusedRequests"]) == [
        (["option"], 2),
        (["unsupported_format"], 1),
    ]
    assert by_name["ExplainTargets"] == [(2, ["gradcam"]), (1, ["guided_gradcam"])]
    latencies = by_name["ExplanationLatencySeconds"]
    assert [labels for _, labels in latencies] == [["gradcam"], ["guided_gradcam"]]
    assert all(0 < seconds < 60 for seconds, _ in latencies)


def test_make_serve_config_exports_these_metrics():
    """config.properties (make serve, from the repository root) turns Prometheus mode on with this YAML."""
    repo = METRICS_YAML.parents[2]
    settings = read_properties(repo / "config.properties")
    assert settings["metrics_mode"] == "prometheus"
    assert (repo / settings["metrics_config"]).resolve() == METRICS_YAML.resolve()
