"""Everything the servers load: our MARs, the stock-handler MARs, and the request images.

Both kinds of MAR get the same weights, batchSize 8, maxBatchDelay 50 ms and one worker,
so an end-to-end difference is the handler's. Our MARs come from ``handlers.archive``;
the stock ones from torch-model-archiver with ``--handler image_classifier`` and a
model file defining the architecture (``benchmarks/stock``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from handlers.archive import main as archive_main
from handlers.inspection import CLASSES, WEIGHTS_FILE
from handlers.inspection.samples import SAMPLES_DIR

from .cases import save_random_resnet50

STOCK_DIR = Path(__file__).resolve().parent / "stock"
HANDLERS_DIR = Path(__file__).resolve().parents[1] / "handlers"
BATCH_SIZE = 8
MAX_BATCH_DELAY_MS = 50


@dataclass(frozen=True)
class Served:
    """One model as both servers see it: our MAR, the stock MAR, and the images to send."""

    name: str
    stock_name: str
    mar: str
    stock_mar: str
    images: tuple[bytes, ...]


def _quietly(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        archive_main(argv)


def build_ours(store: Path, model: str, name: str, weights: Path | None, workers: int = 1) -> str:
    """Our MAR for ``model`` ('inspection' or 'resnet50') under ``name``; returns the file name."""
    kind = ["inspection"] if model == "inspection" else ["torchvision", "--arch", model, "--weights", str(weights)]
    _quietly(
        [
            *kind,
            "--name",
            name,
            "--export-path",
            str(store),
            "--batch-size",
            str(BATCH_SIZE),
            "--max-batch-delay",
            str(MAX_BATCH_DELAY_MS),
            "--workers",
            str(workers),
            "--no-check",
        ]
    )
    return f"{name}.mar"


def _resnet_labels() -> list[str]:
    import torchvision

    return list(torchvision.models.ResNet50_Weights.DEFAULT.meta["categories"])


def build_stock(store: Path, model: str, name: str, weights: Path, workers: int = 1) -> str:
    """A stock ``image_classifier`` MAR (the inspection one with its input transform, see stock/)."""
    with tempfile.TemporaryDirectory(prefix="stock-mar-") as tmp:
        stage = Path(tmp) / "files"
        stage.mkdir()
        labels = list(CLASSES) if model == "inspection" else _resnet_labels()
        (stage / "index_to_name.json").write_text(json.dumps({str(i): label for i, label in enumerate(labels)}))
        if model == "inspection":
            shutil.copytree(
                HANDLERS_DIR,
                stage / "handlers",
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pth", "samples"),
            )
            model_file, handler = STOCK_DIR / "inspection_model.py", str(STOCK_DIR / "inspection_classifier.py")
        else:
            model_file, handler = STOCK_DIR / "resnet50_model.py", "image_classifier"
        config = Path(tmp) / "model-config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "minWorkers": workers,
                    "maxWorkers": workers,
                    "batchSize": BATCH_SIZE,
                    "maxBatchDelay": MAX_BATCH_DELAY_MS,
                    "responseTimeout": 300,
                }
            )
        )
        command = [
            sys.executable,
            "-c",
            "from model_archiver.model_packaging import generate_model_archive as g; g()",
            "--model-name",
            name,
            "--version",
            "1.0",
            "--model-file",
            str(model_file),
            "--serialized-file",
            str(weights),
            "--handler",
            handler,
            "--extra-files",
            str(stage),
            "--config-file",
            str(config),
            "--export-path",
            str(store),
            "--force",
        ]
        subprocess.run(command, check=True, env={**os.environ, "TMPDIR": tmp})
    return f"{name}.mar"


def photo_like_jpegs(count: int = 4, size: tuple[int, int] = (500, 375)) -> tuple[bytes, ...]:
    """Seeded smooth colour fields with grain, as JPEG at a typical ImageNet photo size."""
    rng = np.random.default_rng(4)
    images = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
        grain = rng.normal(0, 12, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return tuple(images)


def build(store: Path, models: tuple[str, ...]) -> dict[str, Served]:
    """Our MAR and the stock MAR of each model into ``store``."""
    store.mkdir(parents=True, exist_ok=True)
    served = {}
    for model in models:
        if model == "inspection":
            weights, images = WEIGHTS_FILE, tuple(p.read_bytes() for p in sorted(SAMPLES_DIR.glob("*.png")))
        else:
            weights, images = save_random_resnet50(store / f"{model}-random.pth"), photo_like_jpegs()
        served[model] = Served(
            model,
            f"stock_{model}",
            build_ours(store, model, model, weights),
            build_stock(store, model, f"stock_{model}", weights),
            images,
        )
    return served


def random_weights(store: Path, model: str) -> Path | None:
    """The weights file ``build`` used for ``model`` (None for inspection: built in)."""
    return None if model == "inspection" else store / f"{model}-random.pth"
