"""The engine's entry point: model + batch + per-sample jobs in, predictions + maps out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .guided import GuidedReLUMode, GuideSwitch
from .layers import LayerRecord, discover_target_layer, map_candidates, resolve_target_layer, trace_module_outputs
from .linear_head import detect_linear_head
from .methods import METHODS, ExplainedModel, MapLayer, MethodError, MethodLimits, MethodParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """What to explain for one image.

    ``targets`` are explicit class indices; without them the ``top_classes`` best predicted
    classes of this same forward pass are explained. ``params`` tune the methods that take any.
    """

    method: str = "gradcam"
    targets: tuple[int, ...] = ()
    top_classes: int = 1
    params: MethodParams = field(default_factory=MethodParams)


@dataclass(frozen=True)
class Explanation:
    """One raw, non-negative map, at the layer's or the input's resolution.

    ``target`` is the class explained (None for class-agnostic methods); ``channel``, ``mean``
    and ``peak`` describe a channel of layer activations.
    """

    method: str
    target: int | None
    values: torch.Tensor  # h x w
    channel: int | None = None
    mean: float | None = None
    peak: float | None = None


@dataclass
class SampleResult:
    """Class probabilities of one image and its explanations, in target order."""

    probabilities: torch.Tensor  # K
    explanations: list[Explanation] = field(default_factory=list)


def _map_layers(records: list[LayerRecord]) -> dict[str, MapLayer]:
    """Every layer whose output is a map, last first, with its N x C x H x W shape for one image."""
    layers = {}
    for record in map_candidates(records):
        assert record.layout is not None and record.output_shape is not None
        shape = tuple(record.layout.to_nchw(torch.empty(record.output_shape, device="meta")).shape)
        layers[record.name] = MapLayer(record.module, shape, record.layout)
    return layers


class Explainer:
    """Explains an eval-mode classifier; parameters are frozen so autograd records only heads.

    ``cam_fast_path=False`` turns the pool + linear head shortcut off (benchmarks compare both).
    """

    def __init__(
        self,
        model: nn.Module,
        input_size: tuple[int, int],
        target_layer: str | None = None,
        device: torch.device | str = "cpu",
        *,
        cam_fast_path: bool = True,
        limits: MethodLimits | None = None,
    ) -> None:
        self.device = torch.device(device)
        model = model.to(self.device).eval().requires_grad_(False)
        example = torch.rand((1, 3, *input_size), generator=torch.Generator().manual_seed(0)).to(self.device)
        records, logits = trace_module_outputs(model, example)
        self.num_classes = int(logits.shape[1])
        layer_name = target_layer or discover_target_layer(model, example, records)
        record = resolve_target_layer(model, layer_name, records, example)
        assert record.layout is not None
        channels_first = record.layout.kind == "nchw"
        head = detect_linear_head(model, record.module, example, records) if cam_fast_path and channels_first else None
        self.explained = ExplainedModel(
            model,
            record.module,
            layer_name,
            record.layout,
            head,
            input_size,
            _map_layers(records),
            limits or MethodLimits(),
        )
        self.guided_note = self._guided_coverage(example)

    @property
    def model(self) -> nn.Module:
        """The model explained: frozen, in eval mode, on this explainer's device."""
        return self.explained.model

    @property
    def layer(self) -> nn.Module:
        return self.explained.layer

    @property
    def layer_name(self) -> str:
        return self.explained.layer_name

    @property
    def input_size(self) -> tuple[int, int]:
        return self.explained.input_size

    @property
    def layer_names(self) -> list[str]:
        """Layers whose activations can be shown (channels-first maps), last first."""
        return list(self.explained.layers)

    @property
    def uses_cam_fast_path(self) -> bool:
        return self.explained.linear_head is not None

    @property
    def methods(self) -> list[str]:
        """Names of the methods this model supports (``cam`` only with a pool + linear head)."""
        return [name for name, method in METHODS.items() if method.available(self.explained)]

    def _guided_coverage(self, example: torch.Tensor) -> str | None:
        """What guided maps of this model are, in a sentence, when the guided rule does not cover
        every activation (GELU, SiLU...: it is defined for ReLU only); None when it does."""
        mode = GuidedReLUMode(GuideSwitch())
        with torch.inference_mode(), mode:
            self.model(example)
        if not mode.unguided_calls and mode.guided_calls:
            logger.info("guided backprop covers all %d activation calls (ReLU/ReLU6)", mode.guided_calls)
            return None
        others = ", ".join(f"{count} {name}" for name, count in sorted(mode.unguided_calls.items())) or "none"
        note = (
            f"the guided rule (defined for ReLU) applies at {mode.guided_calls} ReLU calls of this model but not "
            f"at its other activations ({others}): there the map is the plain gradient "
            "(for guided_gradcam: gradient x Grad-CAM)"
        )
        logger.warning("guided backprop: %s", note)
        return note

    def check(self, job: Job) -> None:
        """Raise ValueError (MethodError for what a request asked) if ``job`` can't be explained."""
        method = METHODS.get(job.method)
        if method is None:
            raise MethodError(f"unknown method {job.method!r}; valid: {', '.join(METHODS)}")
        bad = [t for t in job.targets if not 0 <= t < self.num_classes]
        if bad:
            raise MethodError(f"target class {bad[0]} is outside 0..{self.num_classes - 1}")
        if job.targets and method.explains in ("image", "channel"):
            raise MethodError(f"method {job.method!r} is not class-specific: 'target' does not apply to it")
        method.check(self.explained, job.params, len(job.targets) or job.top_classes)

    def explain(self, images: torch.Tensor, jobs: Sequence[Job]) -> list[SampleResult]:
        """One forward pass per (method, params) group in the batch; results in input order."""
        if len(images) != len(jobs):
            raise ValueError(f"{len(images)} images but {len(jobs)} jobs")
        for job in jobs:
            self.check(job)
        images = images.to(self.device)
        groups: dict[tuple[str, MethodParams], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.method, job.params), []).append(i)
        if len(groups) == 1:  # the usual case: no copy of the batch
            return self._run_group(images, list(jobs))
        results: list[SampleResult | None] = [None] * len(jobs)
        for rows in groups.values():
            for i, result in zip(rows, self._run_group(images[rows], [jobs[i] for i in rows]), strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def _run_group(self, images: torch.Tensor, jobs: list[Job]) -> list[SampleResult]:
        method, params = METHODS[jobs[0].method], jobs[0].params

        def resolve(logits: torch.Tensor) -> list[list[int]]:
            k = min(max(job.top_classes for job in jobs), self.num_classes)
            top = logits.topk(k, dim=1).indices.tolist()
            return [list(job.targets) or top[i][: job.top_classes] for i, job in enumerate(jobs)]

        output = method.run(self.explained, images, resolve, params)
        results = [SampleResult(p) for p in torch.softmax(output.logits.float(), dim=1)]
        if output.maps is None:
            return results
        stats = output.stats.tolist() if output.stats is not None else [None] * len(output.slots.rows)
        pairs = zip(output.slots.rows.tolist(), output.slots.targets.tolist(), output.maps.detach(), stats, strict=True)
        for row, index, values, stat in pairs:
            if method.explains == "class":
                explanation = Explanation(method.name, index, values)
            elif method.explains == "channel":
                explanation = Explanation(method.name, None, values, channel=index, mean=stat[0], peak=stat[1])
            else:
                explanation = Explanation(method.name, None, values)
            results[row].explanations.append(explanation)
        return results
