"""What the server's Python must have to run our workers, checked before anything imports it.

A MAR ships our own code, but not torch, torchvision or Captum: a worker whose Python lacks
one would crash-loop with a bare ModuleNotFoundError. TorchServe's per-model requirements
file is no cure: it installs with ``pip install -t <model dir>``, which puts a fresh torch
(and CUDA wheels) into every model's directory. A failed load is no cure either: TorchServe
restarts the worker forever while requests wait and /ping still says Healthy. So the worker
loads a stand-in that logs one line naming what is missing and the command that installs it,
and answers every request at once with a 503 that says the same.

Some packages only some MARs need (timm, for timm models): they are checked when such a
model loads (the builder is in its model config), so the other MARs never require them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

# import name -> the name pip installs it under
WORKER_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "captum": "captum",
    "numpy": "numpy",
    "PIL": "pillow",
    "yaml": "pyyaml",
}
# Needed only by the MARs whose model builder (gradcam.model.builder) names them:
# builder -> {import name: pip name}
MODEL_PACKAGES = {
    "timm": {"timm": "timm"},
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a broken install
        return False


def missing_packages(builder: str | None = None) -> list[str]:
    """pip names of the worker packages this Python cannot import, with those of ``builder``'s models."""
    needed = {**WORKER_PACKAGES, **MODEL_PACKAGES.get(builder or "", {})}
    return [pip_name for module, pip_name in needed.items() if not _importable(module)]


def missing_message(missing: list[str]) -> str:
    """What is missing, and the command that installs it into this Python."""
    return (
        f"torchserve-gradcam cannot serve: the Python that runs TorchServe ({sys.executable}) lacks "
        f"{', '.join(missing)}; install with: {sys.executable} -m pip install {' '.join(missing)}"
    )


class MissingPackagesHandler:
    """Stands in for the handler when packages are missing: every request gets a 503 naming them."""

    def __init__(self, missing: list[str] | None = None) -> None:
        self.message = missing_message(missing_packages() if missing is None else missing)

    def initialize(self, context: Any) -> None:
        """Log the problem once per worker, where operators look."""
        logger.error(self.message)

    def handle(self, data: list[Any], context: Any) -> list[bytes]:
        """One 503 per request of the batch, at once."""
        body = json.dumps({"error": self.message}).encode("utf-8")
        for idx in range(len(data)):
            context.set_response_status(503, "Service Unavailable", idx)
            context.set_response_content_type(idx, "application/json")
        return [body for _ in data]
