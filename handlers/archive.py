"""Build self-contained MARs: ``python -m handlers.archive {inspection,torchvision,custom,timm} ...``.

Each MAR carries the ``handlers`` package itself, the model-config YAML (batching +
our ``gradcam:`` keys), ``index_to_name.json`` and the weights, so a plain
``torchserve --model-store model_store --models name=name.mar`` serves it without
installing this project into the server's environment. The model is built and
explained once before packing, so a broken MAR is refused here, not at deploy time.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml

from .engine import METHODS, Explainer, Job, TargetLayerError
from .kserve_layout import MOUNT, ServingSettings, write_layout
from .models import (
    LabelCountError,
    ModelClassError,
    ModelLoadError,
    import_timm,
    parse_labels,
    read_label_file,
)
from .preprocess import InputSpec
from .serving.config import CONFIG_KEY, LIMIT_DEFAULTS, OPTIONAL_WHOLE, ServingConfig
from .serving.faithfulness import LEVELS as FAITHFULNESS_LEVELS
from .serving.loading import load_served_model
from .serving.options import BUILTIN_DEFAULTS, FORMATS, SIZES, OptionParser
from .serving.policy import POLICY_RULES

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
ENTRY_FILE = PACKAGE_DIR / "serving" / "gradcam_entry.py"
# The worker needs neither the client, the viewer, the evaluation, the test helpers nor the samples.
_NOT_SHIPPED = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.pth", "*.pt", "samples", "client", "viewer", "evaluation", "testing"
)
# torch-model-archiver's own rule for model names; it also keeps the name a plain file name.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# One flag per per-model limit of the serving config; each default comes from its table.
LIMIT_FLAGS = {key: "--" + key.removesuffix("_s").replace("_", "-") for key in LIMIT_DEFAULTS}
# The serving config's keys that may be left out (the worker decides then), each with its flag.
OPTIONAL_FLAGS = {key: "--" + key.replace("_", "-") for key in OPTIONAL_WHOLE}
_LIMIT_HELP = {
    "max_image_pixels": "refuse larger images with 413",
    "max_targets": "most classes one request may name or explain",
    "max_top_k": "most predictions one request may ask for (top_k)",
    "max_response_bytes": "refuse answers larger than this with 400; keep it below the server's max_response_size",
    "max_jpeg_scans": "refuse progressive JPEGs with more scans (decode-time bomb)",
    "decode_timeout_s": "seconds one image may take to decode",
    "max_occlusion_forwards": "most perturbed forwards one image may cost with method occlusion",
    "max_ig_steps": "most steps a request may ask of method integrated_gradients",
    "max_faithfulness_steps": "most deletion/insertion steps a request may ask with faithfulness=full",
    "decode_threads": "large uploads of one batch decoded at once (1: one after another)",
}
# Bounds of the TorchServe keys, with the reason for each upper bound in the flag's help.
BATCH_SIZE = (1, 256)
BATCH_DELAY_MS = (0, 60_000)
RESPONSE_TIMEOUT_S = (1, 3_600)
WORKERS = (1, 128)
TORCH_THREADS = (1, 256)
INPUT_SIDE = (1, 8_192)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


class UsageError(Exception):
    """An argument that cannot work, found after parsing; the message names its flag."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"argument {flag}: {message}")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a MAR is built from, validated before any model is built."""

    name: str
    config: dict[str, Any]
    labels: list[str]
    weights: Path
    extra: list[Path]


def _spec_default(name: str) -> Any:
    """The default of InputSpec field ``name`` (ImageNet mean/std): one source for them."""
    return next(f.default for f in dataclasses.fields(InputSpec) if f.name == name)


def _input_dict(spec: InputSpec) -> dict[str, Any]:
    """An InputSpec as the ``gradcam.input`` section of the model config."""
    section: dict[str, Any] = {
        "resize": spec.resize if isinstance(spec.resize, int) else list(spec.resize),
        "interpolation": spec.interpolation,
        "mean": list(spec.mean),
        "std": list(spec.std),
    }
    if spec.crop is not None:
        section["crop"] = spec.crop
    return section


def _existing_file(flag: str, path: str) -> Path:
    """``path`` when it is a readable file, else a UsageError naming ``flag``."""
    if not os.path.isfile(path):
        raise UsageError(flag, f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise UsageError(flag, f"cannot read {path}: permission denied")
    return Path(path)


def _labels(path: str) -> list[str]:
    """The labels of ``--labels``, refused with the file's problem on one line."""
    try:
        return read_label_file(str(_existing_file("--labels", path)))
    except ModelLoadError as error:
        raise UsageError("--labels", str(error)) from None


def _inspection(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], list[str], Path, list[Path]]:
    """The embedded default model: its spec, labels and weights."""
    from .inspection import CLASSES, WEIGHTS_FILE
    from .inspection.synthetic import INPUT_SPEC

    return {"builder": "inspection"}, _input_dict(INPUT_SPEC), list(CLASSES), Path(WEIGHTS_FILE), []


def _torchvision(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], list[str], Path, list[Path]]:
    """A torchvision architecture: its preset transforms, ImageNet or ``--labels`` labels, ``--weights``."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if args.arch not in known:
        close = difflib.get_close_matches(args.arch, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        raise UsageError("--arch", f"unknown torchvision classification architecture {args.arch!r}; {hint}")
    weights = _existing_file("--weights", args.weights)
    weights_enum = torchvision.models.get_model_weights(args.arch).DEFAULT
    preset = weights_enum.transforms()
    spec = {
        "resize": int(preset.resize_size[0]),
        "crop": int(preset.crop_size[0]),
        "interpolation": preset.interpolation.value,
        "mean": list(preset.mean),
        "std": list(preset.std),
    }
    categories = list(weights_enum.meta["categories"])
    labels = _labels(args.labels) if args.labels else parse_labels(categories, f"{args.arch} categories")
    model: dict[str, Any] = {"builder": "torchvision", "arch": args.arch, "num_classes": len(labels)}
    kwargs = _model_kwargs(args.model_kwargs) if args.model_kwargs else {}
    for name in ("weights", "pretrained", "num_classes"):
        if name in kwargs:
            why = "the labels give the class count" if name == "num_classes" else "the weights come from --weights"
            raise UsageError("--model-kwargs", f"{name!r} is not allowed: {why}")
    if kwargs:
        model["kwargs"] = kwargs
    return model, spec, labels, weights, []


IMAGENET_CLASSES = 1000


def _imagenet_labels() -> list[str]:
    """torchvision's ImageNet-1k category names, for timm models with the ImageNet head."""
    import torchvision

    categories = torchvision.models.get_model_weights("resnet50").DEFAULT.meta["categories"]
    return parse_labels(list(categories), "ImageNet categories")


def _timm_name(timm: Any, name: str) -> Any:
    """The pretrained config of timm model ``name`` (an architecture, optionally ``.tag``); unknown -> close names."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise UsageError("--model", f"unknown timm model {name!r} (timm {timm.__version__}); {hint}")
    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # an architecture with a tag it does not have
        tags = f"timm.list_pretrained('{name.split('.')[0]}*')"
        raise UsageError("--model", f"{str(error).rstrip('.')}; see {tags}") from None


def _timm_size(args: argparse.Namespace, kwargs: dict[str, Any], config: dict[str, Any]) -> int:
    """The square input side: --input-size, else the ``img_size`` the model is built with, else timm's config.

    timm's data config describes the pretrained weights (518 for DINOv2); a model built with
    ``img_size=224`` takes 224, so that wins over the config.
    """
    if args.input_size:
        return int(args.input_size)
    size = kwargs.get("img_size", config["input_size"][1:])
    sides = [size, size] if isinstance(size, int) else size
    if not isinstance(sides, (list, tuple)) or len(sides) != 2 or not all(type(side) is int for side in sides):
        raise UsageError("--model-kwargs", f"img_size must be a whole number or [height, width], got {size!r}")
    height, width = sides
    if height != width:
        raise UsageError("--input-size", f"{args.model} takes {height} x {width} inputs; give a square --input-size")
    return int(height)


def _timm_input(args: argparse.Namespace, kwargs: dict[str, Any], pretrained_cfg: Any) -> dict[str, Any]:
    """The input transform of timm's own data config (size, interpolation, mean/std, crop_pct), flags override it.

    Like timm's eval transform: resize the shorter side to int(size / crop_pct), centre-crop ``size``.
    """
    from timm.data import resolve_data_config

    config = resolve_data_config({}, pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {})
    size = _timm_size(args, kwargs, config)
    mode = config.get("crop_mode", "center")
    if mode not in ("center", "squash") and not args.resize:
        raise UsageError("--resize", f"timm's crop_mode {mode!r} of {args.model} is not supported; give --resize")
    scale = args.resize or int(size / config["crop_pct"])
    interpolation = args.interpolation or config["interpolation"]
    if interpolation not in INTERPOLATIONS:
        raise UsageError(
            "--interpolation", f"timm's interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
        )
    return {
        # squash: both sides to the scale (aspect not kept), as timm does; center: the shorter side.
        "resize": [scale, scale] if mode == "squash" and not args.resize else scale,
        "crop": size,
        "interpolation": interpolation,
        "mean": list(args.mean or _channels_of(config["mean"], kwargs)),
        "std": list(args.std or _channels_of(config["std"], kwargs)),
    }


def _channels_of(values: Any, kwargs: dict[str, Any]) -> list[float]:
    """timm's per-channel ``values`` (RGB) for a model built with ``in_chans=1``: their mean, one value."""
    values = [float(value) for value in values]
    return [sum(values) / len(values)] if kwargs.get("in_chans") == 1 and len(values) == 3 else values


def _timm(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], list[str], Path, list[Path]]:
    """A timm model: its data config's transform, ``--labels`` (ImageNet's for 1000 classes), ``--weights``."""
    timm = import_timm()
    pretrained_cfg = _timm_name(timm, args.model)
    kwargs = _model_kwargs(args.model_kwargs) if args.model_kwargs else {}
    if "pretrained" in kwargs:
        raise UsageError("--model-kwargs", "'pretrained' is not allowed: the weights come from --weights, never online")
    weights = _existing_file("--weights", args.weights)
    labels = _labels(args.labels) if args.labels else None
    num_classes = kwargs.pop("num_classes", len(labels) if labels else IMAGENET_CLASSES)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError("--model-kwargs", f"num_classes must be a whole number >= 1, got {num_classes!r}")
    if labels is None:
        if num_classes != IMAGENET_CLASSES:
            raise UsageError("--labels", f"required: the model has {num_classes} classes, not ImageNet's 1000")
        labels = _imagenet_labels()
    if len(labels) != num_classes:
        raise UsageError("--labels", f"{len(labels)} labels but --model-kwargs num_classes is {num_classes}")
    model: dict[str, Any] = {"builder": "timm", "name": args.model, "num_classes": num_classes}
    if kwargs:
        model["kwargs"] = kwargs
    return model, _timm_input(args, kwargs, pretrained_cfg), labels, weights, []


def _model_kwargs(text: str) -> dict[str, Any]:
    """``--model-kwargs``: a JSON object of constructor arguments."""
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError("--model-kwargs", f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(kwargs, dict):
        raise UsageError("--model-kwargs", f"must be a JSON object like '{{\"num_classes\": 3}}', got {text!r}")
    return kwargs


def _custom(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], list[str], Path, list[Path]]:
    """The user's model file, class, kwargs, input size, normalisation, labels and weights."""
    model_file = _existing_file("--model-file", args.model_file)
    if model_file.suffix != ".py":
        raise UsageError("--model-file", f"must be a Python file (.py), got {model_file.name}")
    model: dict[str, Any] = {"builder": "file", "file": model_file.name}
    if args.model_class:
        model["class"] = args.model_class
    if args.model_kwargs:
        model["kwargs"] = _model_kwargs(args.model_kwargs)
    weights = _existing_file("--weights", args.weights)
    spec: dict[str, Any] = {
        "resize": args.resize if args.resize else [args.input_size, args.input_size],
        "interpolation": "bilinear",
        "mean": args.mean,
        "std": args.std,
    }
    if args.resize:
        spec["crop"] = args.input_size
    return model, spec, _labels(args.labels), weights, [model_file]


def model_config(args: argparse.Namespace, model: dict[str, Any], input_spec: dict[str, Any]) -> dict[str, Any]:
    """The model-config YAML: TorchServe's batching keys plus our ``gradcam:`` section."""
    defaults: dict[str, Any] = {
        "method": args.method,
        "top_k": args.top_k,
        "top_k_explanations": args.top_k_explanations,
        "format": args.format,
        "size": args.size,
        "faithfulness": args.faithfulness,
    }
    defaults.update({key: getattr(args, key) for key in POLICY_RULES if getattr(args, key) is not None})
    section: dict[str, Any] = {
        "model": model,
        "input": input_spec,
        "defaults": defaults,
        **{key: getattr(args, key) for key in LIMIT_DEFAULTS},
    }
    if args.target_layer:
        section["target_layer"] = args.target_layer
    for key in OPTIONAL_WHOLE:  # left out: the worker decides
        if getattr(args, key) is not None:
            section[key] = getattr(args, key)
    workers = {"minWorkers": args.workers, "maxWorkers": args.workers} if args.workers else {}
    return {
        **workers,
        "batchSize": args.batch_size,
        "maxBatchDelay": args.max_batch_delay,
        "responseTimeout": args.response_timeout,
        CONFIG_KEY: section,
    }


def _flag_of(message: str) -> str:
    """The flag behind a config or option error message ('gradcam.max_targets', option 'top_k')."""
    keys = {**LIMIT_FLAGS, **OPTIONAL_FLAGS, "target_layer": "--target-layer"}
    for key, flag in keys.items():
        if f"'{CONFIG_KEY}.{key}'" in message:
            return flag
    found = re.search(r"option '(\w+)'", message)
    return "--" + found.group(1).replace("_", "-") if found else "--mean/--std/--input-size"


def validate_config(config: dict[str, Any], labels: list[str]) -> ServingConfig:
    """Everything the worker checks at load that needs no model: the same code, so the same rules."""
    try:
        serving = ServingConfig.from_yaml(config)
        OptionParser(labels, list(METHODS), serving.defaults, serving.max_targets, serving.max_top_k)
    except ValueError as error:
        message = str(error).removeprefix(f"invalid '{CONFIG_KEY}.defaults' in the model config: ")
        for key in LIMIT_DEFAULTS:
            message = message.replace(f"'{CONFIG_KEY}.{key}' ", "")
        message = re.sub(r"^option '\w+' ", "", message)
        raise UsageError(_flag_of(str(error)), message) from None
    return serving


def plan_mar(args: argparse.Namespace) -> Plan:
    """Validate every argument and read the labels: fast, and before any model is built."""
    default_name = {"torchvision": "arch", "timm": "model"}.get(args.kind)
    name: str = args.name or (getattr(args, default_name) if default_name else args.kind)
    if not _MODEL_NAME.fullmatch(name):
        raise UsageError(
            "--name",
            f"{name!r} is not a plain model name (letters, digits, '_', '-', '.'; starting with a letter or digit)",
        )
    model, input_spec, labels, weights, extra = {
        "inspection": _inspection,
        "torchvision": _torchvision,
        "custom": _custom,
        "timm": _timm,
    }[args.kind](args)
    config = model_config(args, model, input_spec)
    validate_config(config, labels)
    return Plan(name, config, labels, weights, extra)


def _model_class_error(error: ModelClassError, wanted: str | None) -> UsageError:
    """``--model-class`` advice for a model file with no, several or no such nn.Module class."""
    classes = ", ".join(error.classes) or "none"
    if wanted:
        return UsageError("--model-class", f"the model file has no nn.Module class {wanted!r}; its classes: {classes}")
    if error.classes:
        return UsageError("--model-class", f"the model file defines several nn.Module classes ({classes}): name one")
    return UsageError("--model-file", "the model file defines no nn.Module class")


def check_model(plan: Plan, stage: Path) -> Explainer:
    """Load as the worker will (the same function) and explain once: refuses a broken MAR early."""
    serving = ServingConfig.from_yaml(plan.config)
    try:
        explainer = load_served_model(plan.config, str(stage), str(plan.weights), torch.device("cpu")).explainer
    except LabelCountError as error:
        raise UsageError("--labels", f"{error.labels} labels but the model outputs {error.classes} classes") from None
    except ModelClassError as error:
        raise _model_class_error(error, serving.model.get("class")) from None
    except TargetLayerError as error:
        raise UsageError("--target-layer", str(error)) from None
    except RuntimeError as error:
        if isinstance(error, ModelLoadError):
            raise
        channels = serving.input.channels
        hint = ""
        if "channels" in str(error):  # the model's first layer takes another number of channels
            hint = " (a grayscale model takes 1 channel: give --mean and --std one value each)" if channels == 3 else ""
        raise ModelLoadError(
            f"the model fails on a 1x{channels}x{serving.input.size[0]}x{serving.input.size[1]} input: {error}{hint}"
        ) from None
    images = torch.rand((2, serving.input.channels, *serving.input.size), generator=torch.Generator().manual_seed(0))
    explainer.explain(images, [Job("gradcam"), Job("guided_gradcam")])
    return explainer


def _stage(plan: Plan, tmp: Path) -> tuple[Path, Path]:
    """The extra-files folder (package, model file, labels) and the model-config YAML, under ``tmp``."""
    stage = tmp / "files"
    shutil.copytree(PACKAGE_DIR, stage / "handlers", ignore=_NOT_SHIPPED)
    for path in plan.extra:
        shutil.copy2(path, stage / path.name)
    labels = {str(i): name for i, name in enumerate(plan.labels)}
    (stage / "index_to_name.json").write_text(json.dumps(labels, indent=1, ensure_ascii=False), encoding="utf-8")
    config_file = tmp / "model-config.yaml"
    config_file.write_text(yaml.safe_dump(plan.config, sort_keys=False), encoding="utf-8")
    return stage, config_file


def build_mar(plan: Plan, args: argparse.Namespace) -> Path:
    """Stage the package + config + labels, check the model, run torch-model-archiver."""
    export = Path(args.export_path)
    export.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gradcam-mar-") as tmp:
        stage, config_file = _stage(plan, Path(tmp))
        if args.check:
            explainer = check_model(plan, stage)
            logger.info("model checked: target layer %s, %d classes", explainer.layer_name, explainer.num_classes)
        command = [
            sys.executable,
            "-c",
            "from model_archiver.model_packaging import generate_model_archive as g; g()",
            "--model-name",
            plan.name,
            "--version",
            args.version,
            "--serialized-file",
            str(plan.weights),
            "--handler",
            str(ENTRY_FILE),
            "--extra-files",
            str(stage),
            "--config-file",
            str(config_file),
            "--export-path",
            str(export),
            "--force",
        ]
        # The archiver stages in $TMPDIR/<model name>: give it a private one.
        subprocess.run(command, check=True, env={**os.environ, "TMPDIR": tmp})
    return export / f"{plan.name}.mar"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block): ``prog: error: message``."""

    def error(self, message: str) -> NoReturn:
        """Exit 2 with the message on one line, as argparse does but without the usage text."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _whole(low: int, high: int) -> Any:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (a standard deviation)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _add_limits(common: argparse.ArgumentParser) -> None:
    """One flag per per-model limit of the serving config, its default from LIMIT_DEFAULTS."""
    for key, default in LIMIT_DEFAULTS.items():
        common.add_argument(
            LIMIT_FLAGS[key],
            dest=key,
            type=type(default),
            default=default,
            metavar="SECONDS" if isinstance(default, float) else "N",
            help=f"{_LIMIT_HELP.get(key, 'per-model limit')} (default {default:,})",
        )


def _add_common(common: argparse.ArgumentParser) -> None:
    """Flags of every kind of model: name, batching, workers, defaults for requests, limits."""
    common.add_argument("--name", help="model name, a plain file name (default: the kind or the arch)")
    common.add_argument("--version", default="1.0")
    common.add_argument("--export-path", default="model_store", help="where the .mar goes (default: model_store)")
    common.add_argument(
        "--batch-size",
        type=_whole(*BATCH_SIZE),
        default=8,
        help=f"TorchServe batchSize, {BATCH_SIZE[0]}..{BATCH_SIZE[1]} (default 8): one batch is one forward and "
        "backward in one worker, its memory grows with the batch, and larger batches stop paying off on a CPU",
    )
    common.add_argument(
        "--max-batch-delay",
        type=_whole(*BATCH_DELAY_MS),
        default=50,
        help=f"ms to wait for a batch to fill, {BATCH_DELAY_MS[0]}..{BATCH_DELAY_MS[1]} (default 50): "
        "every request may wait this long for batch-mates, so more than a minute is a mistake",
    )
    common.add_argument(
        "--workers",
        type=_whole(*WORKERS),
        help=f"min = max workers, {WORKERS[0]}..{WORKERS[1]}, each a process with its own copy of the model "
        "(default: the server's default_workers_per_model, one per core)",
    )
    common.add_argument(
        "--torch-threads",
        type=_whole(*TORCH_THREADS),
        help=f"torch threads per worker, {TORCH_THREADS[0]}..{TORCH_THREADS[1]}, at most the cores of one machine "
        "(default: OMP_NUM_THREADS if set, else 1)",
    )
    common.add_argument(
        "--response-timeout",
        type=_whole(*RESPONSE_TIMEOUT_S),
        default=120,
        help=f"seconds one batch may take before TorchServe restarts the worker, {RESPONSE_TIMEOUT_S[0]}.."
        f"{RESPONSE_TIMEOUT_S[1]} (default 120)",
    )
    common.add_argument(
        "--max-batch-forwards",
        type=_whole(1, 10**9),
        help="forward passes one batch may cost, a backward counted as two; a request that does not fit beside "
        "its batch-mates gets 503 (default: what the worker measures it runs in half the response timeout)",
    )
    common.add_argument("--target-layer", help="module name to explain (default: discovered)")
    defaults = BUILTIN_DEFAULTS  # the request options' own defaults: one table
    common.add_argument(
        "--method", choices=list(METHODS), default=defaults["method"], help=f"default method ({defaults['method']})"
    )
    common.add_argument(
        "--top-k", type=int, default=defaults["top_k"], help=f"predictions returned by default ({defaults['top_k']})"
    )
    common.add_argument(
        "--top-k-explanations",
        type=int,
        default=defaults["top_k_explanations"],
        help=f"top classes explained by default ({defaults['top_k_explanations']})",
    )
    common.add_argument(
        "--format", choices=FORMATS, default=defaults["format"], help=f"default format ({defaults['format']})"
    )
    common.add_argument(
        "--size",
        choices=SIZES,
        default=defaults["size"],
        help=f"default map size for grid/png/raw ({defaults['size']})",
    )
    policy = "cost policy (any rule that applies explains; the rest get the prediction only, at method=none cost)"
    common.add_argument(
        "--explain-below", type=float, metavar="P", help=f"{policy}: explain when the top probability is below P"
    )
    common.add_argument(
        "--explain-rate", type=float, metavar="R", help=f"{policy}: explain a sampled fraction R (0..1) of requests"
    )
    common.add_argument(
        "--explain-classes", metavar="LABELS", help=f"{policy}: always explain predictions of these classes (a,b)"
    )
    common.add_argument(
        "--faithfulness",
        choices=FAITHFULNESS_LEVELS,
        default=defaults["faithfulness"],
        help=f"default faithfulness measure of each map ({defaults['faithfulness']}; drop: one more forward)",
    )
    _add_limits(common)
    common.add_argument("--no-check", dest="check", action="store_false", help="skip building the model before packing")
    common.add_argument(
        "--kserve-layout",
        metavar="DIR",
        help="also write KServe's storage layout for a storageUri: DIR/model-store/NAME.mar (instead of "
        "--export-path) and DIR/config/config.properties (model snapshot with --batch-size, --max-batch-delay, "
        "--workers (default 1 per pod), metrics_mode=prometheus)",
    )
    common.add_argument(
        "--kserve-root",
        default=MOUNT,
        help=f"where the storage is mounted in the pod, for the paths in that config (default {MOUNT})",
    )


def parser() -> argparse.ArgumentParser:
    """Command-line interface; one sub-command per kind of model."""
    main = _Parser(prog="python -m handlers.archive", description=(__doc__ or "").split("\n\n")[0])
    common = _Parser(add_help=False)
    _add_common(common)
    kinds = main.add_subparsers(dest="kind", required=True)
    kinds.add_parser("inspection", parents=[common], help="the embedded default model (synthetic metal surfaces)")
    tv = kinds.add_parser("torchvision", parents=[common], help="a torchvision architecture with your weights")
    tv.add_argument("--arch", required=True, help="e.g. resnet50, googlenet, densenet121")
    tv.add_argument("--weights", required=True, help="state_dict file (.pth)")
    tv.add_argument("--labels", help="labels file for a fine-tuned head (default: ImageNet categories)")
    tv.add_argument(
        "--model-kwargs",
        help="JSON object of constructor arguments a state_dict cannot carry, e.g. '{\"transform_input\": true}' "
        "for googlenet / inception_v3 weights saved from torchvision's ImageNet checkpoints",
    )
    custom = kinds.add_parser("custom", parents=[common], help="your own model file + state_dict + labels")
    custom.add_argument("--model-file", required=True, help="Python file defining the nn.Module")
    custom.add_argument("--model-class", help="class name, if the file defines several modules")
    custom.add_argument("--model-kwargs", help="JSON object of constructor arguments")
    custom.add_argument("--weights", required=True, help="state_dict file (.pth)")
    custom.add_argument(
        "--labels",
        required=True,
        help='UTF-8 file: JSON list, {"0": name} object (ImageNet-style ["n01440764", "tench"] values too) '
        "or one label per line; labels must be unique, non-empty, not numbers, without commas or padding",
    )
    custom.add_argument("--input-size", type=_whole(*INPUT_SIDE), required=True, help="square input side")
    custom.add_argument(
        "--resize", type=_whole(*INPUT_SIDE), help="resize the shorter side to this, then centre-crop --input-size"
    )
    per_channel = "3 values (RGB), or 1 for a grayscale model, which then sees the image's luminance"
    custom.add_argument(
        "--mean", type=float, nargs="+", default=list(_spec_default("mean")), help=f"{per_channel} (default ImageNet)"
    )
    custom.add_argument(
        "--std",
        type=_positive_float,
        nargs="+",
        default=list(_spec_default("std")),
        help=f"{per_channel} (default ImageNet)",
    )
    _add_timm(kinds, common)
    return main


def _add_timm(kinds: Any, common: argparse.ArgumentParser) -> None:
    """The ``timm`` kind: a timm model name, weights, labels, create_model arguments, transform overrides."""
    timm = kinds.add_parser(
        "timm", parents=[common], help="a timm model (pip install timm) with your weights; nothing is downloaded"
    )
    timm.add_argument("--model", required=True, help="timm model name, e.g. deit_tiny_patch16_224")
    timm.add_argument("--weights", required=True, help="state_dict file (.pth)")
    timm.add_argument(
        "--labels", help="labels file (required unless the model has ImageNet's 1000 classes: then its categories)"
    )
    timm.add_argument(
        "--model-kwargs",
        help='JSON object of timm.create_model arguments, e.g. \'{"img_size": 224, "num_classes": 3}\'',
    )
    overrides = "(default: timm's data config of the model)"
    timm.add_argument("--input-size", type=_whole(*INPUT_SIDE), help=f"square input side {overrides}")
    timm.add_argument(
        "--resize", type=_whole(*INPUT_SIDE), help=f"shorter side before the centre crop, {overrides}: size / crop_pct"
    )
    timm.add_argument("--interpolation", choices=INTERPOLATIONS, help=overrides)
    timm.add_argument("--mean", type=float, nargs="+", help=f"3 values, 1 with in_chans=1 {overrides}")
    timm.add_argument("--std", type=_positive_float, nargs="+", help=f"3 values, 1 with in_chans=1 {overrides}")


def _failed(error: BaseException) -> str:
    """One line for a failed build: an OSError as 'reason: file', anything else as its message."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    if isinstance(error, subprocess.CalledProcessError):
        return f"torch-model-archiver failed with exit status {error.returncode} (its output is above)"
    return str(error)


def main(argv: list[str] | None = None) -> None:
    """Validate all arguments, then build: expected errors are one line on stderr (exit 2 usage, 1 build)."""
    cli = parser()
    args = cli.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.kserve_layout:
        args.export_path = str(Path(args.kserve_layout) / "model-store")
    try:
        plan = plan_mar(args)
        path = build_mar(plan, args)
        if args.kserve_layout:
            settings = ServingSettings(
                plan.name, args.version, args.batch_size, args.max_batch_delay, args.workers or 1, args.response_timeout
            )
            print(f"wrote {write_layout(Path(args.kserve_layout), path, settings, args.kserve_root)}")
    except UsageError as error:
        cli.error(str(error))
    except (ModelLoadError, OSError, subprocess.CalledProcessError) as error:
        cli.exit(1, f"{cli.prog}: error: {' '.join(_failed(error).split())}\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
