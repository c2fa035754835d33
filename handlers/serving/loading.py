"""Load what a MAR serves, the one way both the worker and the archive CLI's check do it.

Config, weights (``weights_only=True``), model, explainer (target layer, head), labels and
the option parser with the model's defaults: a MAR the CLI accepts is one the worker loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ..engine import METHODS, Explainer
from ..models import build_model, read_labels, read_state_dict
from .config import ServingConfig
from .options import OptionParser

LABELS_FILE = "index_to_name.json"


@dataclass(frozen=True)
class ServedModel:
    """Everything a worker needs to answer requests for one MAR."""

    config: ServingConfig
    explainer: Explainer
    labels: list[str]
    options: OptionParser


def load_served_model(
    yaml_config: dict[str, Any] | None, model_dir: str, weights: str | None, device: torch.device
) -> ServedModel:
    """Build and check the MAR's model in ``model_dir``; raises ValueError/ModelLoadError saying why."""
    config = ServingConfig.from_yaml(yaml_config)
    state = read_state_dict(weights, device) if weights else None
    model = build_model(config.model, model_dir, state)
    explainer = Explainer(
        model,
        config.input.size,
        config.target_layer,
        device,
        limits=config.method_limits,
        channels=config.input.channels,
    )
    labels = read_labels(os.path.join(model_dir, LABELS_FILE), explainer.num_classes)
    options = OptionParser(labels, list(METHODS), config.defaults, config.max_targets, config.max_top_k)
    return ServedModel(config, explainer, labels, options)
