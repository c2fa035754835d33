"""Build the classifier a MAR describes and load its weights safely.

The ``gradcam.model`` section of the model config names a builder:
- ``{builder: inspection}``: the embedded default model;
- ``{builder: torchvision, arch: resnet50, num_classes: 1000}``: any torchvision
  classification architecture;
- ``{builder: file, file: my_model.py, class: Net, kwargs: {...}}``: the user's own
  module shipped in the MAR (``class`` may be omitted when the file defines one
  ``nn.Module``).
Weights are a state_dict, always loaded with ``weights_only=True``.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

BUILDERS = ("inspection", "torchvision", "file")


class ModelLoadError(RuntimeError):
    """The MAR's model, weights or labels are unusable; the message says exactly why."""


def _torchvision_model(spec: dict[str, Any], state: dict[str, torch.Tensor] | None) -> nn.Module:
    import torchvision

    arch = spec.get("arch")
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise ModelLoadError(f"unknown torchvision architecture {arch!r}; known: {', '.join(sorted(available))}")
    kwargs: dict[str, Any] = {"num_classes": int(spec.get("num_classes", 1000))}
    if arch in ("googlenet", "inception_v3"):
        # Checkpoints may or may not carry the auxiliary heads; eval mode never runs them.
        kwargs["aux_logits"] = state is not None and any(key.startswith(("aux1.", "AuxLogits.")) for key in state)
        kwargs["init_weights"] = False
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def _file_model(spec: dict[str, Any], model_dir: str) -> nn.Module:
    path = os.path.join(model_dir, spec.get("file", ""))
    if not spec.get("file") or not os.path.isfile(path):
        raise ModelLoadError(f"model file {spec.get('file')!r} is missing from the MAR")
    module_spec = importlib.util.spec_from_file_location(f"user_model_{abs(hash(path))}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    classes = [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, nn.Module) and obj.__module__ == module.__name__
    ]
    wanted = spec.get("class")
    chosen = [c for c in classes if c.__name__ == wanted] if wanted else classes
    if len(chosen) != 1:
        names = ", ".join(c.__name__ for c in classes) or "none"
        raise ModelLoadError(
            f"model file {spec['file']!r} must define one nn.Module class (or name it with 'class'); found: {names}"
        )
    return chosen[0](**dict(spec.get("kwargs") or {}))


def read_state_dict(path: str, device: torch.device) -> dict[str, torch.Tensor]:
    """A state_dict loaded with ``weights_only=True``; pickled objects are refused."""
    if not os.path.isfile(path):
        raise ModelLoadError(f"weights file {os.path.basename(path)!r} is missing from the MAR")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling raises many types; all mean 'refused'
        raise ModelLoadError(
            f"weights file {os.path.basename(path)!r} was refused by torch.load(weights_only=True) "
            f"(a pickled object instead of a state_dict, or a corrupt file): {str(error).splitlines()[0]}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"weights file {os.path.basename(path)!r} is not a state_dict (a dict of tensors)")
    return state


def build_model(spec: dict[str, Any], model_dir: str, state: dict[str, torch.Tensor] | None) -> nn.Module:
    """The model the spec names, with ``state`` loaded strictly when given."""
    builder = spec.get("builder")
    if builder == "inspection":
        from .inspection.network import InspectionNet

        model: nn.Module = InspectionNet()
    elif builder == "torchvision":
        model = _torchvision_model(spec, state)
    elif builder == "file":
        model = _file_model(spec, model_dir)
    else:
        raise ModelLoadError(f"gradcam.model.builder {builder!r} is not one of {', '.join(BUILDERS)}")
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ModelLoadError(f"weights do not fit the {type(model).__name__} architecture: {error}") from None
    return model


def read_labels(path: str, num_classes: int) -> list[str]:
    """Class names from ``index_to_name.json`` ({"0": "ok", ...}), or the indices as text."""
    if not os.path.isfile(path):
        logger.warning("no index_to_name.json in the MAR: labels are the class indices")
        return [str(i) for i in range(num_classes)]
    with open(path, encoding="utf-8") as handle:
        mapping = json.load(handle)
    if not isinstance(mapping, dict):
        raise ModelLoadError('index_to_name.json must be an object {"0": "label", ...}')
    labels = [mapping.get(str(i)) for i in range(num_classes)]
    names = [label[-1] if isinstance(label, list) else label for label in labels]  # ImageNet style ["n0..", "name"]
    if len(mapping) != num_classes or any(not isinstance(n, str) for n in names):
        raise ModelLoadError(
            f"index_to_name.json has {len(mapping)} labels but the model outputs {num_classes} classes "
            f'(keys must be "0".."{num_classes - 1}")'
        )
    return names
