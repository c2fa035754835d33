"""A real TorchServe serving the default model, shared by the integration tests."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handlers.archive import main as archive_main
from handlers.inspection import synthetic
from handlers.testing.torchserve import TorchServe

pytestmark = pytest.mark.integration

BATCH_DELAY_MS = 3000  # long enough for concurrent requests to form one batch


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """The default MAR, plus a copy with a long batch delay to prove batches form."""
    store = tmp_path_factory.mktemp("model_store")
    archive_main(["inspection", "--export-path", str(store)])
    archive_main(
        [
            "inspection",
            "--name",
            "inspection_batched",
            "--max-batch-delay",
            str(BATCH_DELAY_MS),
            "--export-path",
            str(store),
            "--no-check",
        ]
    )
    return store


@pytest.fixture(scope="session")
def server(model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("torchserve")
    with TorchServe(
        model_store, {"inspection": "inspection.mar", "inspection_batched": "inspection_batched.mar"}, workdir
    ) as running:
        yield running
    shutil.rmtree(workdir / "logs", ignore_errors=True)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def samples() -> dict[str, bytes]:
    """One generated PNG per kind, from a seed the model was not trained on."""
    import numpy.random

    rng = numpy.random.default_rng(20261123)
    return {kind: png(synthetic.render(kind, rng).image) for kind in ("ok", "scratch", "dent", "scratch+dent")}
