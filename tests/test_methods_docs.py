"""The README's methods table and the viewer's methods.json are written from the registry and are current."""

from __future__ import annotations

import json

from handlers.client import methods_docs
from handlers.engine.methods import METHODS


def test_generated_files_are_current():
    assert methods_docs.main(["--check"]) == 0, "run: python -m handlers.client.methods_docs"


def test_table_and_viewer_list_every_method():
    table = methods_docs.README.read_text().split(methods_docs.START)[1].split(methods_docs.END)[0]
    assert [line.split("|")[1].strip(" `") for line in table.strip().splitlines()[2:]] == list(METHODS)
    listed = json.loads(methods_docs.VIEWER_METHODS.read_text())["methods"]
    assert [m["name"] for m in listed] == list(METHODS)
    assert methods_docs.captum_at_run_time() == {"occlusion", "integrated_gradients"}


def test_costs_come_from_the_published_section_5_only():
    results = """## 1. Engine
### inspection (128x128), 20 rounds
| path | best-time ratio (CPU) |
|---|---|
| ours: gradcam | 1.07x |
## 5. Engine: every method of the registry vs a plain prediction (1 torch thread(s))
### inspection (128x128), one forward per image: batch 8, 20 rounds; quiet
| method | path | batch | wall ms per batch | ratio (CPU) | best-time ratio (CPU) | passes |
|---|---|---|---|---|---|---|
| plain prediction | model(x), inference_mode | 8 | 3.2 | 1x | 1x | 1 forward |
| gradcam | CAM path (pool + linear) | 8 | 3.4 | 1.05x (1.0–1.1) | 1.04x | 1 forward |
| gradcam | autograd (cam_fast_path=False) | 8 | 3.8 | 1.15x (1.1–1.2) | 1.14x | 1 forward |
### resnet50 (224x224), one forward per image: batch 8
| method | path | batch | wall ms per batch | ratio (CPU) | best-time ratio (CPU) | passes |
|---|---|---|---|---|---|---|
| gradcam | CAM path (pool + linear) | 8 | 500 | 1.00x | 1.01x | 1 forward |
### inspection (128x128), more than one forward per image: batch 4
| method | path | batch | wall ms per batch | ratio (CPU) | best-time ratio (CPU) | passes |
|---|---|---|---|---|---|---|
| occlusion | its own passes | 4 | 300 | 90x | 88.5x | many |
"""
    costs = methods_docs.measured_costs(results)
    assert costs["gradcam"] == "1.04x" and costs["occlusion"] == "88.5x"
    assert methods_docs.measured_costs(results.split("## 5.")[0]) == {}


def test_costs_come_from_the_latest_report_with_section_5(tmp_path):
    full, methods_only = tmp_path / "RESULTS.md", tmp_path / "RESULTS-methods.md"
    full.write_text("# Benchmarks\n\nDate: 2026-11-26 14:16 UTC. Machine: x\n")
    methods_only.write_text("# Benchmarks\n\nDate: 2026-11-26 17:16 UTC. Machine: x\n")
    assert methods_docs.latest_report((full, methods_only)).startswith("# Benchmarks\n\nDate: 2026-11-26 17:16")
    assert methods_docs.latest_report((tmp_path / "missing.md",)) == ""
