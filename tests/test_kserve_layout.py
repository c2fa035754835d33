"""The KServe storage layout written by the archive CLI: files, TorchServe settings, model snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handlers import kserve_layout
from handlers.archive import main as archive_main
from handlers.kserve_layout import ServingSettings, properties
from handlers.testing.torchserve import frontend_rss_bound, read_properties

POD_MEMORY = 4 * 2**30  # the InferenceService's memory limit (deploy/kserve/inferenceservice.yaml)
WORKER_MEMORY = 2**30  # one worker's RSS, rounded up (README: 766 MB after the 20,000-request soak)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kserve")
    archive_main(
        [
            *("inspection", "--no-check", "--batch-size", "4", "--max-batch-delay", "20", "--workers", "2"),
            *("--kserve-layout", str(root)),
        ]
    )
    return root


def test_layout_holds_the_mar_and_a_kserve_ready_config(layout):
    assert (layout / "model-store" / "inspection.mar").is_file()
    settings = read_properties(layout / "config" / "config.properties")
    assert settings["inference_address"] == settings["management_address"] == "http://127.0.0.1:8085"
    assert settings["metrics_address"] == "http://0.0.0.0:8082"
    assert settings["model_store"] == "/mnt/models/model-store"
    assert settings["enable_envvars_config"] == "false"  # TS_SERVICE_ENVELOPE is then ignored
    assert settings["metrics_mode"] == "prometheus" and settings["disable_token_authorization"] == "true"
    snapshot = json.loads(settings["model_snapshot"])
    assert snapshot["modelCount"] == 1
    entry = snapshot["models"]["inspection"]["1.0"]
    assert entry["marName"] == "inspection.mar" and entry["defaultVersion"] is True
    assert (entry["batchSize"], entry["maxBatchDelay"], entry["minWorkers"], entry["maxWorkers"]) == (4, 20, 2, 2)


def test_metrics_yaml_is_shipped_when_the_project_has_one(layout):
    settings = read_properties(layout / "config" / "config.properties")
    if kserve_layout.METRICS_YAML.is_file():
        assert settings["metrics_config"] == "/mnt/models/config/metrics.yaml"
        assert (layout / "config" / "metrics.yaml").read_bytes() == kserve_layout.METRICS_YAML.read_bytes()
    else:
        assert "metrics_config" not in settings and not (layout / "config" / "metrics.yaml").exists()


def test_config_without_metrics_yaml_and_at_another_mount():
    text = properties(ServingSettings("m", "2.0", 8, 50, 1, 120), root="/models", metrics_yaml=False)
    settings = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert "metrics_config" not in settings and settings["model_store"] == "/models/model-store"
    assert json.loads(settings["model_snapshot"])["models"]["m"]["2.0"]["batchSize"] == 8


@pytest.mark.parametrize(("workers", "batch_size"), [(1, 8), (2, 8), (1, 32)])
def test_frontend_memory_fits_the_pod(workers, batch_size):
    """The JVM caps follow the sizing rule and leave room in the pod for the workers."""
    text = properties(ServingSettings("m", "1.0", batch_size, 50, workers, 120))
    settings = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    bound = frontend_rss_bound(settings)
    assert bound is not None and bound + workers * WORKER_MEMORY <= POD_MEMORY
