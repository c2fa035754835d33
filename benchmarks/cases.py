"""The two benchmarked models, as a user has them: eval mode, trainable parameters.

- ``resnet50``: torchvision ResNet-50 with seeded random weights (no pretrained weights
  on this machine; timing and memory do not depend on the weight values);
- ``inspection``: the embedded default model with its shipped weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from handlers.inspection import INPUT_SIZE, WEIGHTS_FILE
from handlers.inspection.network import InspectionNet

BATCH = 8
SEED = 0


@dataclass(frozen=True)
class Case:
    """A model to benchmark and the input side it expects."""

    name: str
    model: nn.Module
    input_size: tuple[int, int]

    def images(self, batch: int = BATCH) -> torch.Tensor:
        """A seeded batch of normalised-looking inputs (N x 3 x H x W)."""
        generator = torch.Generator().manual_seed(SEED)
        return torch.randn((batch, 3, *self.input_size), generator=generator)


def random_resnet50() -> nn.Module:
    """ResNet-50 with torchvision's initialisation under a fixed seed: same weights every run."""
    torch.manual_seed(SEED)
    return torchvision.models.resnet50(weights=None).eval()


def save_random_resnet50(path: Path) -> Path:
    """The state_dict our MAR and the stock MAR both serve."""
    torch.save(random_resnet50().state_dict(), path)
    return path


def inspection_model() -> nn.Module:
    model = InspectionNet()
    model.load_state_dict(torch.load(WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return model.eval()


def cases(names: tuple[str, ...] = ("inspection", "resnet50")) -> list[Case]:
    builders = {
        "inspection": lambda: Case("inspection", inspection_model(), (INPUT_SIZE, INPUT_SIZE)),
        "resnet50": lambda: Case("resnet50", random_resnet50(), (224, 224)),
    }
    return [builders[name]() for name in names]
