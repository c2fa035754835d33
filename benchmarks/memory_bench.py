"""Section 3a: memory autograd keeps for backward during one explanation of resnet50, batch 8.

``torch.autograd.graph.saved_tensors_hooks`` sees every tensor an autograd node saves.
Two sums over their distinct storages: all of them (the usual measure: 753 MB for
Captum on a trainable resnet50, which includes the ~98 MB of weights convolutions save
to compute weight gradients), and only the new memory, without the storages that exist
anyway (parameters, buffers, the input batch): what the explanation adds until its
backward is done.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from handlers.engine import Job

from . import baselines
from .cases import cases
from .engine_bench import explainers
from .report import Section, Target, megabytes, table

TARGET_BYTES = 10 * 2**20


@dataclass(frozen=True)
class Saved:
    """Tensors saved for backward and the distinct storages they reference."""

    tensors: int
    all_bytes: int
    new_bytes: int


def _storage(tensor: torch.Tensor) -> tuple[int, int] | None:
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensors without a plain storage
        return None
    return storage.data_ptr(), storage.nbytes()


def saved_for_backward(fn: Callable[[], object], existing: Iterable[torch.Tensor]) -> Saved:
    """Run ``fn`` and measure what autograd saved; ``existing`` storages are not new memory."""
    owned = {key[0] for key in map(_storage, existing) if key is not None}
    storages: dict[int, int] = {}
    count = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        key = _storage(tensor)
        if key is not None:
            storages[key[0]] = max(storages.get(key[0], 0), key[1])
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    new = sum(size for pointer, size in storages.items() if pointer not in owned)
    return Saved(count, sum(storages.values()), new)


def _tensors_of(*models: nn.Module) -> list[torch.Tensor]:
    return [t for model in models for t in (*model.parameters(), *model.buffers())]


def run() -> Section:
    section = Section("3. Memory")
    (case,) = cases(("resnet50",))
    images = case.images()
    explainer, forced = explainers(case)
    model = case.model
    frozen = copy.deepcopy(model).requires_grad_(False)
    layer_name = explainer.layer_name
    layer, frozen_layer = (dict(m.named_modules())[layer_name] for m in (model, frozen))
    existing = [*_tensors_of(model, frozen, explainer.model), images]
    jobs = {method: [Job(method)] * len(images) for method in ("gradcam", "guided_gradcam")}
    paths = {
        "ours: gradcam (CAM fast path, inference mode)": lambda: explainer.explain(images, jobs["gradcam"]),
        "ours: gradcam, autograd path forced (frozen params, head only)": lambda: forced.explain(
            images, jobs["gradcam"]
        ),
        "ours: guided_gradcam (graph to the input)": lambda: explainer.explain(images, jobs["guided_gradcam"]),
        "Captum LayerGradCam, trainable parameters (as documented)": lambda: baselines.captum_gradcam(
            model, layer, images
        ),
        "Captum LayerGradCam, frozen parameters": lambda: baselines.captum_gradcam(frozen, frozen_layer, images),
        "pytorch-grad-cam GradCAM, trainable parameters": lambda: baselines.pytorch_grad_cam(model, layer, images),
    }
    measured = {name: saved_for_backward(fn, existing) for name, fn in paths.items()}
    section.add(
        f"### Autograd memory saved for backward, resnet50, batch {len(images)}, layer `{layer_name}`",
        "Distinct storages of the tensors autograd saved: all of them (the usual measure, includes "
        "saved weights), and the new memory only (without parameters, buffers and the input, which "
        "exist anyway). Deterministic: not affected by other load.",
        table(
            ["path", "tensors saved", "saved storages (all)", "new memory held for backward"],
            [
                [name, saved.tensors, megabytes(saved.all_bytes), megabytes(saved.new_bytes)]
                for name, saved in measured.items()
            ],
        ),
    )
    forced_saved = measured["ours: gradcam, autograd path forced (frozen params, head only)"]
    section.targets.append(
        Target(
            "autograd memory saved, resnet50 B=8, our non-CAM gradcam",
            "≤ 10 MB",
            f"{megabytes(forced_saved.all_bytes)} ({megabytes(forced_saved.new_bytes)} new)",
            forced_saved.all_bytes <= TARGET_BYTES,
        )
    )
    return section
