"""GPU (section 14): ResNet-50 at batch 8, Grad-CAM vs a plain prediction and Guided Grad-CAM vs
its floor, timed with CUDA synchronisation. Without a GPU the targets are reported open.

Never part of CI: CI machines have no GPU. Run ``python -m benchmarks --only gpu`` on one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from handlers.engine import Explainer, Job

from . import baselines
from .cases import BATCH, random_resnet50
from .report import Section, Target, table
from .settings import Settings
from .timing import calibrate_repeat, interleave

GOALS = {"gradcam / prediction": 1.05, "guided_gradcam / floor": 1.05}


def synchronised(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` followed by a CUDA synchronisation, so wall time covers the GPU's work."""

    def run() -> object:
        result = call()
        torch.cuda.synchronize()
        return result

    return run


def measure(settings: Settings) -> tuple[dict[str, float], str]:
    """Best wall-time ratios on the GPU, and a line naming the device."""
    device = torch.device("cuda")
    model = random_resnet50().to(device)
    explainer = Explainer(copy.deepcopy(model), (224, 224), device=device)
    images = torch.randn((BATCH, 3, 224, 224), generator=torch.Generator().manual_seed(0)).to(device)
    calls = {
        "prediction": synchronised(lambda: baselines.predict(model, images)),
        "gradcam": synchronised(lambda: explainer.explain(images, [Job("gradcam")] * BATCH)),
        "floor": synchronised(lambda: baselines.input_gradient(explainer.model, images)),
        "guided_gradcam": synchronised(lambda: explainer.explain(images, [Job("guided_gradcam")] * BATCH)),
    }
    repeat = calibrate_repeat(calls["prediction"], settings.engine_min_call_s)
    wall, _ = interleave(calls, **settings.engine_rounds, repeat=repeat)
    ratios = {
        "gradcam / prediction": wall.best_ratio("gradcam", "prediction"),
        "guided_gradcam / floor": wall.best_ratio("guided_gradcam", "floor"),
    }
    return ratios, f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"


def run(settings: Settings) -> Section:
    section = Section("14. GPU: ResNet-50, batch 8")
    if not torch.cuda.is_available():
        section.add(
            "No GPU on this machine: the GPU targets stay open until this section runs on one "
            "(`python -m benchmarks --only gpu`). An end-to-end run of a real TorchServe on a GPU needs Java "
            "there as well and has not been made."
        )
        for name, goal in GOALS.items():
            section.targets.append(Target(f"GPU resnet50 batch 8: {name}", f"≤ {goal:.2f}x", "open: no GPU", False))
        return section
    ratios, device = measure(settings)
    section.add(
        f"{device}. Wall time with a CUDA synchronisation after each call, best of interleaved rounds.",
        table(["ratio", "best wall time"], [[name, f"{value:.3f}x"] for name, value in ratios.items()]),
    )
    for name, goal in GOALS.items():
        section.targets.append(
            Target(f"GPU resnet50 batch 8: {name}", f"≤ {goal:.2f}x", f"{ratios[name]:.3f}x", ratios[name] <= goal)
        )
    return section
