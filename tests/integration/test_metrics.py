"""A real TorchServe with metrics_mode=prometheus and our metrics.yaml: its metrics port, parsed."""

from __future__ import annotations

import base64
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import handlers.serving
from handlers.testing.torchserve import TorchServe

pytestmark = pytest.mark.integration

METRICS_YAML = Path(handlers.serving.__file__).parent / "metrics.yaml"
MODEL = "inspection_batched"  # batchSize 8, a 3 s batch delay: concurrent requests form one batch


@pytest.fixture(scope="module")
def metrics_server(model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("torchserve-metrics")
    config = {"metrics_mode": "prometheus", "metrics_config": str(METRICS_YAML)}
    with TorchServe(model_store, {MODEL: f"{MODEL}.mar"}, workdir, config=config) as running:
        yield running
    shutil.rmtree(workdir / "logs", ignore_errors=True)


def scrape(server: TorchServe) -> dict[str, list]:
    """Samples of every family on the metrics port, by family name."""
    text = requests.get(f"{server.url('metrics')}/metrics", timeout=30).text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def samples_of(families: dict[str, list], sample_name: str, **labels: str) -> list:
    return [
        s
        for samples in families.values()
        for s in samples
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(families: dict[str, list], sample_name: str, **labels: str) -> float:
    return sum(s.value for s in samples_of(families, sample_name, **labels))


def test_metrics_port_exports_methods_statuses_latency_targets_batches_and_refusals(metrics_server, samples):
    image = base64.b64encode(samples["scratch+dent"]).decode()
    bodies = [
        {"data": image},
        {"data": image},
        {"data": image, "target": "scratch,dent"},
        {"data": image, "method": "guided_gradcam"},
        {"data": image, "method": "none"},
        {"data": image, "method": "lime"},  # refused: option
        {"data": base64.b64encode(b"not an image").decode()},  # refused: unsupported_format
        {"data": image, "explain_below": 0, "explain_rate": 0},  # the policy skips it
    ]

    def post(body: dict) -> requests.Response:
        return requests.post(
            f"{metrics_server.url()}/predictions/{MODEL}",
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=120,
        )

    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(post, bodies))
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 200, 400, 415, 200]
    skipped = answers[-1].json()
    assert skipped["explained"] is False and skipped["skipped_because"] == "confident"
    assert skipped["explanations"] == [] and skipped["predictions"]
    families = scrape(metrics_server)
    model = {"ModelName": MODEL}

    assert value(families, "ExplainRequests_total", **model, Method="gradcam", Status="200") == 4
    assert value(families, "ExplainRequests_total", **model, Method="guided_gradcam", Status="200") == 1
    assert value(families, "ExplainRequests_total", **model, Method="none", Status="200") == 1
    assert value(families, "ExplainRequests_total", **model, Method="unknown", Status="400") == 1
    assert value(families, "ExplainRequests_total", **model, Method="unknown", Status="415") == 1
    assert value(families, "RefusedRequests_total", **model, Reason="option") == 1
    assert value(families, "RefusedRequests_total", **model, Reason="unsupported_format") == 1
    assert value(families, "ExplainDecisions_total", **model, Method="gradcam", Decision="skipped") == 1

    # Latency: one observation per answered request, in seconds, in the +Inf bucket and under 120 s.
    for method, answered in (("gradcam", 4), ("guided_gradcam", 1), ("none", 1)):
        labels = {**model, "Method": method}
        assert value(families, "ExplanationLatencySeconds_count", **labels) == answered
        assert 0 < value(families, "ExplanationLatencySeconds_sum", **labels) < 120 * answered
        assert value(families, "ExplanationLatencySeconds_bucket", **labels, le="+Inf") == answered
    # Targets: the three explained Grad-CAM requests asked 1, 2 and 1 classes; the skipped one 0.
    assert value(families, "ExplainTargets_count", **model, Method="gradcam") == 4
    assert value(families, "ExplainTargets_sum", **model, Method="gradcam") == 4
    assert value(families, "ExplainTargets_bucket", **model, Method="gradcam", le="1.0") == 3
    # Batches: 8 requests in all, and concurrent ones shared a batch (fewer batches than requests).
    assert value(families, "BatchSize_sum", **model) == len(bodies)
    assert 1 <= value(families, "BatchSize_count", **model) < len(bodies)
    # TorchServe's own metrics are still there.
    assert value(families, "ts_inference_requests_total", model_name=MODEL) == len(bodies)
