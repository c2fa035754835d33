"""Build the classifier a MAR describes and load its weights safely.

The ``gradcam.model`` section of the model config names a builder:
- ``{builder: inspection}``: the embedded default model;
- ``{builder: torchvision, arch: resnet50, num_classes: 1000, kwargs: {...}}``: any torchvision
  classification architecture (``kwargs``: constructor flags a state_dict cannot carry, such as
  GoogLeNet's and Inception v3's ``transform_input``);
- ``{builder: file, file: my_model.py, class: Net, kwargs: {...}}``: the user's own
  module shipped in the MAR (``class`` may be omitted when the file defines one
  ``nn.Module``);
- ``{builder: timm, name: deit_tiny_patch16_224, num_classes: 1000, kwargs: {...}}``: a timm
  model (timm is an optional dependency, imported only for these), never downloaded.
Weights are a state_dict, always loaded with ``weights_only=True``.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import re
import sys
from collections import Counter
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

BUILDERS = ("inspection", "torchvision", "file", "timm")


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
    given = spec.get("kwargs") or {}
    if not isinstance(given, dict):
        raise ModelLoadError(f"gradcam.model.kwargs must be a mapping of constructor arguments, got {given!r}")
    kwargs.update(given)
    try:
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    except Exception as error:  # noqa: BLE001 - a model constructor may raise anything
        raise ModelLoadError(
            f"torchvision.models.get_model({arch!r}, **{kwargs!r}) failed: {type(error).__name__}: {error}"
        ) from None
    if getattr(model, "transform_input", None) is False and "transform_input" not in given:
        # A flag, not a tensor: the state_dict cannot say it. torchvision sets it for its own checkpoints.
        logger.warning(
            "%s is built with transform_input=False, torchvision's default without weights; weights saved from "
            "torchvision's ImageNet checkpoint (weights=...) expect transform_input=True: pass "
            """--model-kwargs '{"transform_input": true}' to the archive CLI""",
            arch,
        )
    return model


def import_timm() -> Any:
    """The timm module, or a ModelLoadError naming the command that installs it into this Python.

    timm is optional: only timm models need it, so it is imported here, never at module level.
    """
    try:
        import timm
    except ImportError:
        raise ModelLoadError(
            f"timm models need the timm package, which {sys.executable} cannot import; install it with: "
            f"{sys.executable} -m pip install timm (in this project's checkout: pip install -e '.[timm]')"
        ) from None
    return timm


def _timm_model(spec: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=..., **kwargs)``: weights come from the MAR."""
    timm = import_timm()
    name = spec.get("name")
    if not isinstance(name, str) or not timm.is_model(name):
        raise ModelLoadError(f"unknown timm model {name!r} (timm {timm.__version__}); see timm.list_models()")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ModelLoadError(f"gradcam.model.kwargs must be a mapping of timm.create_model arguments, got {kwargs!r}")
    num_classes = int(spec.get("num_classes", 1000))
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except Exception as error:  # noqa: BLE001 - a model constructor may raise anything
        raise ModelLoadError(
            f"timm.create_model({name!r}, num_classes={num_classes}, **{kwargs!r}) failed: {type(error).__name__}: "
            f"{error}"
        ) from None


class ModelClassError(ModelLoadError):
    """The model file defines no or several nn.Module classes and none was named; ``classes`` lists them."""

    def __init__(self, message: str, classes: list[str]) -> None:
        super().__init__(message)
        self.classes = classes


def _import_file(path: str, name: str) -> Any:
    """The module in ``path``; any exception it raises on import becomes a one-line ModelLoadError."""
    module_spec = importlib.util.spec_from_file_location(f"user_model_{abs(hash(path))}", path)
    if module_spec is None or module_spec.loader is None:
        raise ModelLoadError(f"model file {name!r} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - user code may raise anything on import
        raise ModelLoadError(f"model file {name!r} failed to import: {type(error).__name__}: {error}") from None
    return module


def _file_model(spec: dict[str, Any], model_dir: str) -> nn.Module:
    name = spec.get("file") or ""
    path = os.path.join(model_dir, name)
    if not name or not os.path.isfile(path):
        raise ModelLoadError(f"model file {spec.get('file')!r} is missing from the MAR")
    module = _import_file(path, name)
    classes = [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, nn.Module) and obj.__module__ == module.__name__
    ]
    wanted = spec.get("class")
    chosen = [c for c in classes if c.__name__ == wanted] if wanted else classes
    if len(chosen) != 1:
        names = [c.__name__ for c in classes]
        raise ModelClassError(
            f"model file {name!r} must define one nn.Module class (or name it with 'class'); "
            f"found: {', '.join(names) or 'none'}",
            names,
        )
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ModelLoadError(f"gradcam.model.kwargs must be a mapping of constructor arguments, got {kwargs!r}")
    try:
        return chosen[0](**kwargs)
    except Exception as error:  # noqa: BLE001 - a user constructor may raise anything
        raise ModelLoadError(f"{chosen[0].__name__}(**{kwargs!r}) failed: {type(error).__name__}: {error}") from None


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


def _fit_problem(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` does not load strictly into ``model`` (missing, unexpected, mis-shaped keys), on one line."""
    expected = model.state_dict()
    problems = [
        f"{what} {_listed(keys)}"
        for what, keys in (
            ("missing keys", [k for k in expected if k not in state]),
            ("unexpected keys", [k for k in state if k not in expected]),
            (
                "shape mismatch at",
                [
                    f"{k} (file {list(state[k].shape)}, model {list(v.shape)})"
                    for k, v in expected.items()
                    if k in state and state[k].shape != v.shape
                ],
            ),
        )
        if keys
    ]
    return "; ".join(problems) or None


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
    elif builder == "timm":
        model = _timm_model(spec)
    else:
        raise ModelLoadError(f"gradcam.model.builder {builder!r} is not one of {', '.join(BUILDERS)}")
    if state is not None:
        problem = _fit_problem(model, state)
        if problem:
            raise ModelLoadError(f"weights do not fit the {type(model).__name__} architecture: {problem}")
        model.load_state_dict(state, strict=True)
    return model


# A label a request can name: in a header or form field, as one item of a comma list,
# and not mistaken for a class index (OptionParser reads "-?[0-9]+" as an index).
_INDEX_LIKE = re.compile(r"-?[0-9]+")
_MAX_SHOWN = 5


def _label_problem(label: str) -> str | None:
    """Why ``label`` cannot be targeted by name, or None when it can."""
    if not label:
        return "is empty"
    if label != label.strip():
        return "has leading or trailing whitespace"
    if _INDEX_LIKE.fullmatch(label):
        return "is a number (a target of digits means a class index)"
    if "," in label:
        return "contains a comma (a target list is comma-separated)"
    if any(not character.isprintable() for character in label):
        return "contains a control character"
    return None


def _label_value(value: Any) -> str | None:
    """A label entry as text: a string, or the name of an ImageNet-style ``["n01440764", "tench"]`` pair."""
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value[-1]
    return value if isinstance(value, str) else None


def _listed(items: list[str]) -> str:
    return ", ".join(items[:_MAX_SHOWN]) + (f", ... ({len(items)} in all)" if len(items) > _MAX_SHOWN else "")


def _ordered(data: dict[Any, Any], source: str) -> list[Any]:
    """The values of a ``{"0": name, ...}`` object in index order; keys must be exactly "0".."n-1"."""
    bad = [repr(key) for key in data if not (isinstance(key, str) and key.isascii() and key.isdigit())]
    if bad:
        raise ModelLoadError(f'{source}: keys must be class indices "0", "1", ...; got {_listed(bad)}')
    non_canonical = [repr(key) for key in data if key != str(int(key))]
    if non_canonical:
        raise ModelLoadError(f"{source}: keys must be written without leading zeros; got {_listed(non_canonical)}")
    indices = {int(key) for key in data}
    missing = [str(i) for i in range(max(indices) + 1) if i not in indices]
    if missing:
        raise ModelLoadError(
            f'{source}: keys must be "0".."{max(indices)}" with none missing; missing: {_listed(missing)}'
        )
    return [data[str(i)] for i in range(len(data))]


def parse_labels(data: Any, source: str) -> list[str]:
    """Class names from a decoded JSON list or ``{"0": name}`` object, each checked to be targetable.

    One set of rules for the archive CLI and the worker: strings (or ImageNet-style
    pairs), unique, none empty, padded, numeric, comma-bearing or with control characters.
    """
    if isinstance(data, dict):
        data = _ordered(data, source) if data else []
    if not isinstance(data, list):
        raise ModelLoadError(f'{source}: labels must be a JSON list or a {{"0": name, ...}} object')
    if not data:
        raise ModelLoadError(f"{source}: no labels")
    names: list[str] = []
    for index, value in enumerate(data):
        name = _label_value(value)
        if name is None:
            raise ModelLoadError(f"{source}: label {index} is {value!r}, not a string")
        problem = _label_problem(name)
        if problem:
            raise ModelLoadError(f"{source}: label {index} {name!r} {problem}")
        names.append(name)
    duplicates = [repr(name) for name, count in Counter(names).items() if count > 1]
    if duplicates:
        raise ModelLoadError(f"{source}: duplicate labels {_listed(duplicates)} (a target by name would be ambiguous)")
    return names


def read_label_file(path: str) -> list[str]:
    """Labels from a UTF-8 file: JSON (``.json``: list or {"0": name} object) or one label per line."""
    source = os.path.basename(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ModelLoadError(
            f"{source} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}): save it as UTF-8"
        ) from None
    if not path.endswith(".json"):
        lines = text.splitlines()
        while lines and not lines[-1].strip():  # blank lines at the end shift no index
            lines.pop()
        return parse_labels(lines, source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{source} is not valid JSON: {error}") from None
    return parse_labels(data, source)


class LabelCountError(ModelLoadError):
    """The labels do not match the model's outputs, one for one."""

    def __init__(self, labels: int, classes: int) -> None:
        super().__init__(
            f'index_to_name.json has {labels} labels but the model outputs {classes} classes (keys must be "0"..'
            f'"{classes - 1}")'
        )
        self.labels = labels
        self.classes = classes


def read_labels(path: str, num_classes: int) -> list[str]:
    """The MAR's ``index_to_name.json`` checked against the model's class count, or the indices as text."""
    if not os.path.isfile(path):
        logger.warning("no index_to_name.json in the MAR: labels are the class indices")
        return [str(i) for i in range(num_classes)]
    labels = read_label_file(path)
    if len(labels) != num_classes:
        raise LabelCountError(len(labels), num_classes)
    return labels
