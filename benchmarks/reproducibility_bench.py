"""Same image, different batches: how much its answer moves, per method (section 8).

Not a timing: the largest max-normalised difference between an image explained alone and
explained last in batches of 8 and 32 (other targets around it), on the default model and
ResNet-50, every method of the registry (occlusion and integrated gradients with few passes).
"""

from __future__ import annotations

import torch

from handlers.engine import Explainer
from handlers.engine.methods import MethodParams
from handlers.evaluation.batch_invariance import BATCH_SIZES, composition_differences

from .cases import cases
from .report import Section, Target, table
from .settings import Settings

# What the README promises on CPU: one-pass maps, and maps summed over many passes (IG, occlusion).
BOUNDS = {"one pass": 1e-4, "many passes": 2e-3}
MANY_PASSES = ("occlusion", "integrated_gradients")
FEW_PASSES = {
    "inspection": MethodParams(window=32, stride=32, steps=4),
    "resnet50": MethodParams(window=112, stride=112, steps=2),
}
QUICK_METHODS = ("gradcam", "guided_gradcam")


def run(settings: Settings) -> Section:
    threads = torch.get_num_threads()
    section = Section(f"8. Same image, different batches ({threads} torch thread(s))")
    section.add(
        "Largest difference, after max-normalisation, of an image's maps and probabilities between "
        f"being explained alone and last in batches of {' and '.join(map(str, BATCH_SIZES))} whose other "
        "images ask for other targets (worst of two probe images; seeded N(0, 1) inputs). Occlusion and "
        "integrated gradients run "
        "with few passes (window 32 on the default model, ResNet-50 window 112; 4 and 2 "
        "steps). Deterministic: not affected by other load."
    )
    rows, worst = [], dict.fromkeys(BOUNDS, 0.0)
    for case in cases(("inspection",) if settings.name == "quick" else ("inspection", "resnet50")):
        explainer = Explainer(case.model, case.input_size)
        methods = QUICK_METHODS if settings.name == "quick" else explainer.methods
        generator = torch.Generator().manual_seed(0)
        images = torch.randn((max(BATCH_SIZES) + 1, 3, *case.input_size), generator=generator)
        differences = composition_differences(explainer, images, methods, FEW_PASSES[case.name])
        for method, value in differences.items():
            kind = "many passes" if method in MANY_PASSES else "one pass"
            worst[kind] = max(worst[kind], value)
        rows += [[case.name, method, f"{value:.1e}"] for method, value in differences.items()]
    section.add(table(["model", "method", "max difference"], rows))
    for kind, bound in BOUNDS.items():
        section.targets.append(
            Target(
                f"same image in another batch: largest difference, {kind} methods",
                f"≤ {bound:.0e}",
                f"{worst[kind]:.1e}",
                worst[kind] <= bound,
            )
        )
    return section
