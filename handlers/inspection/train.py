"""Train InspectionNet deterministically on CPU and write its weights plus a JSON report.

Usage: ``python -m handlers.inspection.train [--out PATH] [--epochs N] ...``. The report
(``PATH`` with a ``.json`` suffix) records the data seeds, the held-out test accuracy and
confusion matrix, the timings and the sha256 of the weights, so a rerun can be compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import CLASSES, IMAGE_SIZE, INPUT_SIZE, MEAN, STD, WEIGHTS_FILE
from .network import InspectionNet
from .synthetic import make_dataset, to_tensor

logger = logging.getLogger(__name__)

_THREADS = 2  # fixed: CPU reductions are only reproducible with a fixed thread count


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights."""

    train_size: int = 2400
    test_size: int = 600
    train_seed: int = 0  # seeds the training images and torch (init, shuffling, flips)
    test_seed: int = 1  # held-out images, never seen in training
    epochs: int = 10
    batch_size: int = 64
    lr: float = 6e-3
    weight_decay: float = 1e-4


def make_deterministic(seed: int) -> None:
    """Seed torch and numpy's global state and forbid nondeterministic kernels."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(_THREADS)
    torch.use_deterministic_algorithms(True)


def load_split(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``size`` balanced samples and preprocess them exactly as the server does."""
    samples = make_dataset(size, seed)
    images = to_tensor([sample.image for sample in samples])
    labels = torch.tensor([sample.label for sample in samples])
    return images, labels


def random_flips(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image horizontally and/or vertically at random: a surface has no up or left."""
    n = images.shape[0]
    flip_x = torch.rand(n, generator=generator) < 0.5
    flip_y = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip_x.view(n, 1, 1, 1), images.flip(3), images)
    return torch.where(flip_y.view(n, 1, 1, 1), images.flip(2), images)


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> None:
    """AdamW with a one-cycle schedule over shuffled, flipped mini-batches (the last partial batch is dropped)."""
    generator = torch.Generator().manual_seed(config.train_seed)
    steps_per_epoch = len(images) // config.batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            loss = loss_fn(model(random_flips(images[batch], generator)), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
        logger.info("epoch %d/%d: mean loss %.4f", epoch + 1, config.epochs, total_loss / steps_per_epoch)


@torch.no_grad()
def confusion_matrix(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 200
) -> torch.Tensor:
    """Eval-mode confusion counts: rows are true classes, columns predicted ones."""
    model.eval()
    predicted = torch.cat([model(chunk).argmax(1) for chunk in images.split(batch_size)])
    counts = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.long)
    counts.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    return counts


def sha256_of(path: Path) -> str:
    """Hex digest of a file, to pin the exact weights a report describes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(
    config: TrainConfig,
    out: Path,
    build: Callable[[int], nn.Module] = InspectionNet,
    architecture: Mapping[str, object] | None = None,
) -> dict:
    """Generate data, train, evaluate on the held-out set, save weights and report; returns the report.

    ``build(num_classes)`` makes the untrained network (the CNN by default; ``vit.py`` passes
    its ViT), right after torch is seeded; ``architecture`` is recorded in the report as is.
    """
    started = time.perf_counter()
    make_deterministic(config.train_seed)
    train_images, train_labels = load_split(config.train_size, config.train_seed)
    test_images, test_labels = load_split(config.test_size, config.test_seed)
    data_seconds = time.perf_counter() - started
    logger.info("generated %d train + %d test images in %.1f s", config.train_size, config.test_size, data_seconds)

    model = build(len(CLASSES))
    fit(model, train_images, train_labels, config)
    train_seconds = time.perf_counter() - started - data_seconds
    confusion = confusion_matrix(model, test_images, test_labels)

    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    report = {
        "classes": list(CLASSES),
        "image_size": IMAGE_SIZE,
        "input_size": INPUT_SIZE,
        "mean": list(MEAN),
        "std": list(STD),
        **asdict(config),
        **({"architecture": dict(architecture)} if architecture else {}),
        "parameters": sum(p.numel() for p in model.parameters()),
        "test_accuracy": confusion.trace().item() / config.test_size,
        "confusion_matrix": confusion.tolist(),
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "threads": _THREADS,
        "torch_version": torch.__version__,
        "weights_sha256": sha256_of(out),
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE, help="weights path; the report goes next to it")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--train-size", type=int, default=defaults.train_size)
    parser.add_argument("--test-size", type=int, default=defaults.test_size)
    parser.add_argument("--train-seed", type=int, default=defaults.train_seed)
    parser.add_argument("--test-seed", type=int, default=defaults.test_seed)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    args = parser.parse_args(argv)
    if args.train_seed == args.test_seed:
        parser.error("--train-seed and --test-seed must differ: the test set has to be held out")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = TrainConfig(
        train_size=args.train_size,
        test_size=args.test_size,
        train_seed=args.train_seed,
        test_seed=args.test_seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
    )
    print(json.dumps(train(config, args.out), indent=2))


if __name__ == "__main__":
    main()
