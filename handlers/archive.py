"""Build self-contained MARs: ``python -m handlers.archive {inspection,torchvision,custom} ...``.

Each MAR carries the ``handlers`` package itself, the model-config YAML (batching +
our ``gradcam:`` keys), ``index_to_name.json`` and the weights, so a plain
``torchserve --model-store model_store --models name=name.mar`` serves it without
installing this project into the server's environment. The model is built and
explained once before packing, so a broken MAR is refused here, not at deploy time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from .engine import METHODS, Explainer
from .models import build_model, read_labels, read_state_dict

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
ENTRY_FILE = PACKAGE_DIR / "serving" / "gradcam_entry.py"
# The worker needs neither the client, the viewer, the evaluation nor the samples.
_NOT_SHIPPED = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.pth", "*.pt", "samples", "client", "viewer", "evaluation"
)


def model_config(args: argparse.Namespace, model: dict[str, Any], input_spec: dict[str, Any]) -> dict[str, Any]:
    """The model-config YAML: TorchServe's batching keys plus our ``gradcam:`` section."""
    defaults: dict[str, Any] = {
        "method": args.method,
        "top_k": args.top_k,
        "top_k_explanations": args.top_k_explanations,
        "format": args.format,
        "size": args.size,
    }
    section: dict[str, Any] = {
        "model": model,
        "input": input_spec,
        "defaults": defaults,
        "max_image_pixels": args.max_image_pixels,
    }
    if args.target_layer:
        section["target_layer"] = args.target_layer
    if args.torch_threads is not None:
        section["torch_threads"] = args.torch_threads
    workers = {"minWorkers": args.workers, "maxWorkers": args.workers} if args.workers else {}
    return {
        **workers,
        "batchSize": args.batch_size,
        "maxBatchDelay": args.max_batch_delay,
        "responseTimeout": args.response_timeout,
        "gradcam": section,
    }


def _inspection(args: argparse.Namespace) -> tuple[dict, dict, list[str], Path, list[Path]]:
    from .inspection import CLASSES, WEIGHTS_FILE
    from .inspection.synthetic import INPUT_SPEC

    spec = {
        "resize": list(INPUT_SPEC.resize),
        "interpolation": INPUT_SPEC.interpolation,
        "mean": list(INPUT_SPEC.mean),
        "std": list(INPUT_SPEC.std),
    }
    return {"builder": "inspection"}, spec, list(CLASSES), Path(WEIGHTS_FILE), []


def _torchvision(args: argparse.Namespace) -> tuple[dict, dict, list[str], Path, list[Path]]:
    import torchvision

    weights_enum = torchvision.models.get_model_weights(args.arch).DEFAULT
    preset = weights_enum.transforms()
    spec = {
        "resize": int(preset.resize_size[0]),
        "crop": int(preset.crop_size[0]),
        "interpolation": preset.interpolation.value,
        "mean": list(preset.mean),
        "std": list(preset.std),
    }
    labels = _read_label_file(args.labels) if args.labels else list(weights_enum.meta["categories"])
    return (
        {"builder": "torchvision", "arch": args.arch, "num_classes": len(labels)},
        spec,
        labels,
        Path(args.weights),
        [],
    )


def _custom(args: argparse.Namespace) -> tuple[dict, dict, list[str], Path, list[Path]]:
    model_file = Path(args.model_file)
    model: dict[str, Any] = {"builder": "file", "file": model_file.name}
    if args.model_class:
        model["class"] = args.model_class
    if args.model_kwargs:
        model["kwargs"] = json.loads(args.model_kwargs)
    spec: dict[str, Any] = {
        "resize": args.resize if args.resize else [args.input_size, args.input_size],
        "interpolation": "bilinear",
        "mean": args.mean,
        "std": args.std,
    }
    if args.resize:
        spec["crop"] = args.input_size
    return model, spec, _read_label_file(args.labels), Path(args.weights), [model_file]


def _read_label_file(path: str) -> list[str]:
    """Labels from a JSON list, a JSON {"0": name} object, or a text file with one per line."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        data = json.loads(text)
        if isinstance(data, dict):
            return [data[str(i)] if isinstance(data[str(i)], str) else data[str(i)][-1] for i in range(len(data))]
        return [str(label) for label in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_model(config: dict[str, Any], stage: Path, weights: Path) -> Explainer:
    """Build, load and explain once, as the worker will: refuses a broken MAR early."""
    from .serving.config import ServingConfig
    from .serving.options import OptionParser

    serving = ServingConfig.from_yaml(config)
    state = read_state_dict(str(weights), torch.device("cpu"))
    model = build_model(serving.model, str(stage), state)
    explainer = Explainer(model, serving.input.size, serving.target_layer)
    labels = read_labels(str(stage / "index_to_name.json"), explainer.num_classes)
    OptionParser(labels, list(METHODS), serving.defaults, serving.max_targets)
    return explainer


def build_mar(args: argparse.Namespace) -> Path:
    """Stage the package + config + labels, check the model, run torch-model-archiver."""
    model, input_spec, labels, weights, extra = {
        "inspection": _inspection,
        "torchvision": _torchvision,
        "custom": _custom,
    }[args.kind](args)
    config = model_config(args, model, input_spec)
    export = Path(args.export_path)
    export.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gradcam-mar-") as tmp:
        stage = Path(tmp) / "files"
        shutil.copytree(PACKAGE_DIR, stage / "handlers", ignore=_NOT_SHIPPED)
        for path in extra:
            shutil.copy2(path, stage / path.name)
        (stage / "index_to_name.json").write_text(json.dumps({str(i): name for i, name in enumerate(labels)}, indent=1))
        config_file = Path(tmp) / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        if args.check:
            explainer = check_model(config, stage, weights)
            logger.info("model checked: target layer %s, %d classes", explainer.layer_name, explainer.num_classes)
        command = [
            sys.executable,
            "-c",
            "from model_archiver.model_packaging import generate_model_archive as g; g()",
            "--model-name",
            args.name,
            "--version",
            args.version,
            "--serialized-file",
            str(weights),
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
    return export / f"{args.name}.mar"


def parser() -> argparse.ArgumentParser:
    """Command-line interface; one sub-command per kind of model."""
    main = argparse.ArgumentParser(prog="python -m handlers.archive", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", help="model name (default: the kind or the arch)")
    common.add_argument("--version", default="1.0")
    common.add_argument("--export-path", default="model_store", help="where the .mar goes (default: model_store)")
    common.add_argument("--batch-size", type=int, default=8, help="TorchServe batchSize (default 8)")
    common.add_argument("--max-batch-delay", type=int, default=50, help="ms to wait for a batch to fill (default 50)")
    common.add_argument(
        "--workers", type=int, help="min = max workers (default: the server's default_workers_per_model, one per core)"
    )
    common.add_argument(
        "--torch-threads", type=int, help="torch threads per worker (default: OMP_NUM_THREADS if set, else 1)"
    )
    common.add_argument("--response-timeout", type=int, default=120, help="seconds (default 120)")
    common.add_argument("--target-layer", help="module name to explain (default: discovered)")
    common.add_argument("--method", default="gradcam", help="default method: gradcam, guided_gradcam or none")
    common.add_argument("--top-k", type=int, default=3, help="predictions returned by default (default 3)")
    common.add_argument(
        "--top-k-explanations", type=int, default=1, help="top classes explained by default (default 1)"
    )
    common.add_argument("--format", default="grid", help="default format: grid, png, overlay or raw")
    common.add_argument("--size", default="feature", help="default map size for grid/png: feature or input")
    common.add_argument("--max-image-pixels", type=int, default=40_000_000, help="refuse larger images (413)")
    common.add_argument("--no-check", dest="check", action="store_false", help="skip building the model before packing")
    kinds = main.add_subparsers(dest="kind", required=True)
    kinds.add_parser("inspection", parents=[common], help="the embedded default model (synthetic metal surfaces)")
    tv = kinds.add_parser("torchvision", parents=[common], help="a torchvision architecture with your weights")
    tv.add_argument("--arch", required=True, help="e.g. resnet50, googlenet, densenet121")
    tv.add_argument("--weights", required=True, help="state_dict file (.pth)")
    tv.add_argument("--labels", help="labels file for a fine-tuned head (default: ImageNet categories)")
    custom = kinds.add_parser("custom", parents=[common], help="your own model file + state_dict + labels")
    custom.add_argument("--model-file", required=True, help="Python file defining the nn.Module")
    custom.add_argument("--model-class", help="class name, if the file defines several modules")
    custom.add_argument("--model-kwargs", help="JSON object of constructor arguments")
    custom.add_argument("--weights", required=True, help="state_dict file (.pth)")
    custom.add_argument("--labels", required=True, help='JSON list / {"0": name} / one label per line')
    custom.add_argument("--input-size", type=int, required=True, help="square input side the model expects")
    custom.add_argument("--resize", type=int, help="resize the shorter side to this, then centre-crop --input-size")
    custom.add_argument("--mean", type=float, nargs=3, default=[0.485, 0.456, 0.406])
    custom.add_argument("--std", type=float, nargs=3, default=[0.229, 0.224, 0.225])
    return main


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.name = args.name or (args.arch if args.kind == "torchvision" else args.kind)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = build_mar(args)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
