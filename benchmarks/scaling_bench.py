"""How cost grows: number of targets, batch size and input size, per method (section 7).

Each table times, interleaved in rounds, a plain prediction and every one-forward method of
the registry under the same conditions, and reports each method's best-CPU-time ratio to that
prediction. The targets table uses a ResNet-18 with seeded random weights (1000 classes, pool +
linear head, fast enough on 2 cores for 10 targets of every method) and the default model
(3 classes: 1 and 3 targets). The CAM path's goal: 10 targets cost at most 1.15x one target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from handlers.engine import METHODS, Explainer, Job

from . import baselines
from .cases import SEED, inspection_model
from .monitor import ForeignLoad
from .report import Section, Target, table
from .settings import Settings
from .timing import Timings, calibrate_repeat, interleave

PLAIN = "plain prediction"
TARGET_COUNTS = (1, 3, 10)
TARGETS_GOAL = 1.15  # CAM path: 10 targets vs 1


@dataclass(frozen=True)
class Grid:
    """What one run of the section measures: sizes, batches and how long."""

    batches: tuple[int, ...]
    resnet_sizes: tuple[int, ...]
    inspection_sizes: tuple[int, ...]
    rounds: int
    call_s: float


FULL_GRID = Grid(batches=(1, 8, 32), resnet_sizes=(160, 224, 320), inspection_sizes=(128, 256), rounds=4, call_s=0.1)
QUICK_GRID = Grid(batches=(1, 8), resnet_sizes=(160,), inspection_sizes=(128,), rounds=1, call_s=0.02)


def random_resnet18() -> nn.Module:
    """ResNet-18 with torchvision's initialisation under a fixed seed."""
    torch.manual_seed(SEED)
    return torchvision.models.resnet18(weights=None).eval()


def one_forward_methods(explainer: Explainer) -> list[str]:
    """Every method of the model that runs one forward per image (the many-pass ones are section 5's)."""
    return [m for m in explainer.methods if m not in ("none", "occlusion", "integrated_gradients")]


def images(batch: int, side: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SEED)
    return torch.randn((batch, 3, side, side), generator=generator)


def explaining(explainer: Explainer, batch: torch.Tensor, job: Job) -> Callable[[], object]:
    """One request's explanation of the whole batch, as a timed call."""
    return lambda: explainer.explain(batch, [job] * len(batch))


def predicting(model: nn.Module, batch: torch.Tensor) -> Callable[[], object]:
    """The plain prediction of the same batch, the reference of every ratio."""
    return lambda: baselines.predict(model, batch)


def timed(calls: dict[str, Callable[[], object]], grid: Grid) -> Timings:
    """CPU timings of ``calls`` and the plain prediction of the same batch, interleaved."""
    repeat = calibrate_repeat(calls[PLAIN], grid.call_s)
    _, cpu = interleave(calls, min_rounds=grid.rounds, max_rounds=grid.rounds, budget_s=0.0, repeat=repeat)
    return cpu


def targets_table(model: nn.Module, side: int, counts: Sequence[int], grid: Grid) -> tuple[list[list[str]], Timings]:
    """Rows per class-specific method: its ratio to a prediction at each number of targets (batch 8)."""
    explainer = Explainer(model, (side, side))
    batch = images(8, side)
    methods = [m for m in one_forward_methods(explainer) if METHODS[m].class_specific]
    calls = {PLAIN: predicting(model, batch)}
    for method in methods:
        for k in counts:
            calls[f"{method}@{k}"] = explaining(explainer, batch, Job(method, top_classes=k))
    cpu = timed(calls, grid)
    rows = []
    for method in methods:
        ratios = [cpu.best_ratio(f"{method}@{k}", PLAIN) for k in counts]
        most_vs_one = cpu.best_ratio(f"{method}@{counts[-1]}", f"{method}@1")
        rows.append([method, *(f"{r:.2f}x" for r in ratios), f"{most_vs_one:.2f}x"])
    return rows, cpu


def grid_table(model: nn.Module, shapes: Sequence[tuple[int, int]], grid: Grid) -> list[list[str]]:
    """Rows per method: its ratio to a prediction of the same batch, for each (batch, side)."""
    explainer = Explainer(model, (shapes[0][1], shapes[0][1]))
    methods = one_forward_methods(explainer)
    columns: list[dict[str, float]] = []
    for batch_size, side in shapes:
        explainer = Explainer(model, (side, side))
        batch = images(batch_size, side)
        calls = {PLAIN: predicting(model, batch)}
        calls.update({method: explaining(explainer, batch, Job(method)) for method in methods})
        cpu = timed(calls, grid)
        columns.append({method: cpu.best_ratio(method, PLAIN) for method in methods})
    return [[method, *(f"{column[method]:.2f}x" for column in columns)] for method in methods]


def run(settings: Settings) -> Section:
    grid = QUICK_GRID if settings.name == "quick" else FULL_GRID
    section = Section("7. How cost grows: targets, batch size, input size (1 torch thread)")
    section.add(
        "Every one-forward method of the registry as a request runs it, timed interleaved with a plain "
        f"prediction of the same batch over {grid.rounds} round(s); cells are ratios of the best CPU times "
        "to that prediction (CAM path where the head is pool + linear, as served). ResNet-18 and "
        "ResNet-50 share the head, so the targets table uses ResNet-18 (seeded random weights) to "
        "afford 10 targets of every method; the default model has 3 classes."
    )
    resnet, inspection = random_resnet18(), inspection_model()
    with ForeignLoad() as load:
        resnet_rows, resnet_cpu = targets_table(resnet, 224, TARGET_COUNTS, grid)
        inspection_rows, _ = targets_table(inspection, 128, (1, 3), grid)
        batch_rows = {
            "inspection": grid_table(inspection, [(b, 128) for b in grid.batches], grid),
            "resnet18": grid_table(resnet, [(b, 224) for b in grid.batches], grid),
        }
        size_rows = {
            "inspection": grid_table(inspection, [(8, s) for s in grid.inspection_sizes], grid),
            "resnet18": grid_table(resnet, [(8, s) for s in grid.resnet_sizes], grid),
        }
    summary = load.summary()
    section.add(f"During this section {summary.describe()}.")
    counts = [f"{k} target{'s' if k > 1 else ''}" for k in TARGET_COUNTS]
    section.add(
        "### Number of targets (batch 8; `top_k_explanations` = k)",
        "resnet18, 224 px:",
        table(["method", *counts, "10 vs 1"], resnet_rows),
        "inspection, 128 px:",
        table(["method", "1 target", "3 targets", "3 vs 1"], inspection_rows),
    )
    section.add("### Batch size (one target each)")
    for name, rows in batch_rows.items():
        section.add(f"{name}:", table(["method", *(f"batch {b}" for b in grid.batches)], rows))
    section.add("### Input size (batch 8)")
    sides = {"inspection": grid.inspection_sizes, "resnet18": grid.resnet_sizes}
    for name, rows in size_rows.items():
        section.add(f"{name}:", table(["method", *(f"{s} px" for s in sides[name])], rows))
    cam_path = [m for m in one_forward_methods(Explainer(resnet, (224, 224))) if METHODS[m].resolution == "layer"]
    worst = max((resnet_cpu.best_ratio(f"{m}@10", f"{m}@1"), m) for m in cam_path if METHODS[m].class_specific)
    section.targets.append(
        Target(
            "engine resnet18, CAM path: 10 targets vs 1 (every class-specific layer method)",
            f"≤ {TARGETS_GOAL:.2f}x",
            f"worst: {worst[1]} {worst[0]:.2f}x best CPU time",
            worst[0] <= TARGETS_GOAL,
            summary.disturbed,
        )
    )
    return section
