"""Section 6: Grad-CAM on vision transformers vs a plain prediction (ViT-B/16, Swin-T, batch 8).

The engine reads a ViT's token map at the last block's first norm (autograd: one backward
through the last block and the head) and Swin's final permute (a pool + linear head: no
backward). Random seeded weights (no pretrained weights on this machine): cost does not
depend on weight values; the ViT head, which torchvision initialises to zeros, gets random
weights so that its gradients are not trivially zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from handlers.engine import Explainer, Job

from .monitor import ForeignLoad
from .report import Section, Target, ratio, seconds, table
from .settings import Settings
from .timing import interleave

BATCH = 8
SIDE = 224
GOAL = 1.10
PLAIN, GRADCAM = "plain prediction", "ours: gradcam (with the prediction)"


def transformer(name: str) -> nn.Module:
    """torchvision ``name`` with seeded random weights, its classifier head random too."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.02)
    return model


def run(settings: Settings) -> Section:
    threads = torch.get_num_threads()
    clock = "CPU" if threads == 1 else "wall"
    section = Section(f"6. Vision transformers: Grad-CAM vs a plain prediction (batch {BATCH}, {threads} thread(s))")
    section.add(
        "Same clock and ratios as section 1: best (minimum) times over interleaved rounds decide. "
        f"Target: Grad-CAM with its prediction <= {GOAL:.2f}x the prediction alone."
    )
    for name in settings.transformer_models:
        model = transformer(name)
        explainer = Explainer(model, (SIDE, SIDE))
        images = torch.randn((BATCH, 3, SIDE, SIDE), generator=torch.Generator().manual_seed(0))
        jobs = [Job("gradcam")] * BATCH

        def plain(model: nn.Module = model, images: torch.Tensor = images) -> object:
            with torch.inference_mode():
                return model(images)

        def gradcam(explainer: Explainer = explainer, images: torch.Tensor = images, jobs: list[Job] = jobs) -> object:
            return explainer.explain(images, jobs)

        calls: dict[str, Callable[[], object]] = {PLAIN: plain, GRADCAM: gradcam}
        with ForeignLoad() as load:
            wall, cpu = interleave(
                calls,
                min_rounds=settings.transformer_rounds,
                max_rounds=settings.transformer_rounds,
                budget_s=0.0,
            )
        deciding = cpu if threads == 1 else wall
        best = deciding.best_ratio(GRADCAM, PLAIN)
        path = "CAM (pool + linear head)" if explainer.uses_cam_fast_path else "autograd, head-only backward"
        section.add(
            f"### {name}: layer `{explainer.layer_name}` ({explainer.explained.layout.kind}), {path}; "
            f"{wall.rounds} rounds; {load.summary().describe()}",
            table(
                ["path", "wall ms per batch", "ratio (wall)", "ratio (CPU)", f"best-time ratio ({clock})"],
                [
                    [n, seconds(wall.stats(n)), ratio(wall.ratio(n, PLAIN)), ratio(cpu.ratio(n, PLAIN)), f"{r:.2f}x"]
                    for n, r in ((PLAIN, 1.0), (GRADCAM, best))
                ],
            ),
        )
        section.targets.append(
            Target(f"{name}: gradcam vs prediction", f"<= {GOAL:.2f}x", f"{best:.2f}x best {clock} time", best <= GOAL)
        )
    return section
