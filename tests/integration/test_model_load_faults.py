"""Broken MARs: the worker refuses to load with one log line saying exactly what is wrong."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import pytest
import torch

from handlers.archive import main as archive_main
from handlers.inspection.network import InspectionNet
from handlers.testing.torchserve import TorchServe

pytestmark = pytest.mark.integration


def rewrite(mar: Path, target: Path, replace: dict[str, bytes | None]) -> str:
    """Copy ``mar`` to ``target`` with members replaced (bytes) or dropped (None)."""
    with zipfile.ZipFile(mar) as source, zipfile.ZipFile(target, "w") as out:
        for item in source.infolist():
            if item.filename in replace:
                data = replace[item.filename]
                if data is not None:
                    out.writestr(item.filename, data)
            else:
                out.writestr(item, source.read(item.filename))
    return target.name


def pickled_module() -> bytes:
    buffer = io.BytesIO()
    torch.save(InspectionNet(), buffer)  # a whole pickled object, not a state_dict
    return buffer.getvalue()


EXPECTED = {
    "wrong_layer": "model wrong_layer failed to load: target layer 'features.99' does not exist in InspectionNet; "
    "candidates (last first): features, features.17",
    "no_weights": "model no_weights failed to load: weights file 'inspection.pth' is missing from the MAR",
    "bad_labels": "model bad_labels failed to load: index_to_name.json has 4 labels but the model outputs 3 classes",
    "pickled": (
        "model pickled failed to load: weights file 'inspection.pth' was refused by torch.load(weights_only=True)"
    ),
}


def test_broken_mars_fail_to_load_with_a_clear_log_line(tmp_path):
    store = tmp_path / "store"
    archive_main(
        [
            "inspection",
            "--name",
            "wrong_layer",
            "--target-layer",
            "features.99",
            "--no-check",
            "--export-path",
            str(store),
        ]
    )
    archive_main(["inspection", "--name", "base", "--export-path", str(store / "base"), "--no-check"])
    base = store / "base" / "base.mar"
    models = {
        "wrong_layer": "wrong_layer.mar",
        "no_weights": rewrite(base, store / "no_weights.mar", {"inspection.pth": None}),
        "bad_labels": rewrite(
            base,
            store / "bad_labels.mar",
            {"index_to_name.json": json.dumps({str(i): f"c{i}" for i in range(4)}).encode()},
        ),
        "pickled": rewrite(base, store / "pickled.mar", {"inspection.pth": pickled_module()}),
    }
    server = TorchServe(store, models, tmp_path / "work").start(wait_ready=False)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not all(line in server.log() for line in EXPECTED.values()):
            time.sleep(1)
        log = server.log()
        missing = [name for name, line in EXPECTED.items() if line not in log]
        assert not missing, f"no clear load error for {missing}:\n{server.tail(60)}"
        assert all(server.ready_workers(name) == 0 for name in models)
    finally:
        server.stop()
