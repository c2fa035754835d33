"""Tiny custom MARs built by our own CLI, for tests that need a served model but no trained one.

``TINY_NET`` is a two-conv network with a pool + linear head (the CAM fast path) at a
``SIDE`` px input; its weights are random under a fixed torch seed, so every build is the same.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ts.context import Context

from handlers.archive import main as archive_main
from handlers.testing.fakes import load_context, unpack_mar

TINY_NET = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))
"""
LABELS = ["cat", "dog", "bird"]
SIDE = 32


def build_custom_mar(
    directory: Path, *extra: str, source: str = TINY_NET, labels: list[str] = LABELS, side: int = SIDE
) -> Path:
    """A MAR of the ``TinyNet`` class in ``source`` (seeded random weights), built by our CLI with ``extra`` flags."""
    (directory / "tiny_net.py").write_text(source)
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - the same source the MAR ships
    torch.manual_seed(0)
    torch.save(namespace["TinyNet"](len(labels)).state_dict(), directory / "tiny.pth")
    (directory / "labels.txt").write_text("\n".join(labels))
    archive_main(
        [
            "custom",
            "--name",
            "tiny",
            "--model-file",
            str(directory / "tiny_net.py"),
            "--weights",
            str(directory / "tiny.pth"),
            "--labels",
            str(directory / "labels.txt"),
            "--input-size",
            str(side),
            "--export-path",
            str(directory),
            *extra,
        ]
    )
    return directory / "tiny.mar"


def custom_context(directory: Path, *flags: str, unpack_to: str = "model") -> Context:
    """The worker Context of a ``TinyNet`` MAR built with ``flags`` (not checked at build)."""
    mar = build_custom_mar(directory, *flags, "--no-check")
    return load_context(unpack_mar(mar, directory / unpack_to), "tiny")
