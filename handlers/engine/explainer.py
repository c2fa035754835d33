"""The engine's entry point: model + batch + per-sample jobs in, predictions + maps out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .guided import GuidedReLUMode, GuideSwitch
from .layers import discover_target_layer, resolve_target_layer, trace_module_outputs
from .linear_head import detect_linear_head
from .methods import METHODS, ModelView

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """What to explain for one image.

    ``targets`` are explicit class indices; without them the ``top_k`` best predicted
    classes of this same forward pass are explained.
    """

    method: str = "gradcam"
    targets: tuple[int, ...] = ()
    top_k: int = 1


@dataclass(frozen=True)
class Explanation:
    """One map: raw non-negative values at the layer (Grad-CAM) or input (guided) resolution."""

    method: str
    target: int
    values: torch.Tensor  # h x w


@dataclass
class SampleResult:
    """Class probabilities of one image and its explanations, in target order."""

    probabilities: torch.Tensor  # K
    explanations: list[Explanation] = field(default_factory=list)


class Explainer:
    """Explains an eval-mode classifier; parameters are frozen so autograd records only heads."""

    def __init__(
        self,
        model: nn.Module,
        input_size: tuple[int, int],
        target_layer: str | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        model = model.to(self.device).eval().requires_grad_(False)
        example = torch.rand((1, 3, *input_size), generator=torch.Generator().manual_seed(0)).to(self.device)
        records, logits = trace_module_outputs(model, example)
        self.num_classes = int(logits.shape[1])
        layer_name = target_layer or discover_target_layer(records, input_size)
        layer = resolve_target_layer(model, layer_name, records, input_size)
        self.view = ModelView(model, layer, layer_name, detect_linear_head(model, layer, example, records))
        self._report_guided_coverage(example)

    @property
    def layer_name(self) -> str:
        return self.view.layer_name

    @property
    def uses_cam_fast_path(self) -> bool:
        return self.view.linear_head is not None

    def _report_guided_coverage(self, example: torch.Tensor) -> None:
        mode = GuidedReLUMode(GuideSwitch())
        with torch.inference_mode(), mode:
            self.view.model(example)
        if mode.unguided_calls or not mode.guided_calls:
            logger.warning(
                "guided backprop is applied at %d ReLU calls but not at %s: the guided rule is "
                "defined for ReLU, so gradients pass those activations unguided",
                mode.guided_calls,
                mode.unguided_calls or "any activation (none found)",
            )
        else:
            logger.info("guided backprop covers all %d activation calls (ReLU/ReLU6)", mode.guided_calls)

    def check_targets(self, targets: Sequence[int]) -> None:
        """Raise ValueError for a class index outside the model's outputs."""
        bad = [t for t in targets if not 0 <= t < self.num_classes]
        if bad:
            raise ValueError(f"target class {bad[0]} is outside 0..{self.num_classes - 1}")

    def explain(self, images: torch.Tensor, jobs: Sequence[Job]) -> list[SampleResult]:
        """One forward pass per method present in the batch; results in input order."""
        if len(images) != len(jobs):
            raise ValueError(f"{len(images)} images but {len(jobs)} jobs")
        for job in jobs:
            if job.method not in METHODS:
                raise ValueError(f"unknown method {job.method!r}; valid: {', '.join(METHODS)}")
            self.check_targets(job.targets)
        images = images.to(self.device)
        groups = {
            name: [i for i, job in enumerate(jobs) if job.method == name]
            for name in dict.fromkeys(j.method for j in jobs)
        }
        if len(groups) == 1:  # the usual case: no copy of the batch
            (name,) = groups
            return self._run_group(METHODS[name], images, list(jobs))
        results: list[SampleResult | None] = [None] * len(jobs)
        for name, rows in groups.items():
            for i, result in zip(
                rows, self._run_group(METHODS[name], images[rows], [jobs[i] for i in rows]), strict=True
            ):
                results[i] = result
        return [r for r in results if r is not None]

    def _run_group(self, method, images: torch.Tensor, jobs: list[Job]) -> list[SampleResult]:
        def resolve(logits: torch.Tensor) -> list[list[int]]:
            if method.name == "none":
                return [[] for _ in jobs]
            k = min(max(job.top_k for job in jobs), self.num_classes)
            top = logits.topk(k, dim=1).indices.tolist()
            return [list(job.targets) or top[i][: job.top_k] for i, job in enumerate(jobs)]

        logits, slots, maps = method.run(self.view, images, resolve)
        probabilities = torch.softmax(logits.float(), dim=1)
        results = [SampleResult(p) for p in probabilities]
        if maps is not None:
            for row, target, values in zip(slots.rows.tolist(), slots.targets.tolist(), maps.detach(), strict=True):
                results[row].explanations.append(Explanation(method.name, target, values))
        return results
