"""The engine's entry point: model + batch + per-sample jobs in, predictions + maps out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .capture import written_in_place
from .faithfulness import Faithfulness, FaithfulnessParams, MapToScore, blank_probabilities, measure
from .guided import GuidedReLUMode, GuideSwitch
from .layers import LayerRecord, discover_target_layer, map_candidates, resolve_target_layer, trace_module_outputs
from .linear_head import detect_linear_head
from .methods import METHODS, ExplainedModel, MapLayer, MethodError, MethodLimits, MethodParams
from .methods.base import predict
from .norm_gradients import norm_modules, one_image_norms
from .policy import Decision, ExplainPolicy, decide_rows, draw
from .row_limits import find_row_limits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """What to explain for one image.

    ``targets`` are explicit class indices; without them the ``top_classes`` best predicted
    classes of this same forward pass are explained. ``params`` tune the methods that take any;
    ``faithfulness``, when given, has each class-specific map measured (``faithfulness.py``).
    """

    method: str = "gradcam"
    targets: tuple[int, ...] = ()
    top_classes: int = 1
    params: MethodParams = field(default_factory=MethodParams)
    faithfulness: FaithfulnessParams | None = None
    # Cost control: explain only if the policy selects this image (policy.py); ``sample_key``
    # fixes its sampling draw (the same key is always sampled the same way).
    policy: ExplainPolicy | None = None
    sample_key: str = ""


@dataclass
class Explanation:
    """One raw, non-negative map, at the layer's or the input's resolution.

    ``target`` is the class explained (None for class-agnostic methods); ``channel``, ``mean``
    and ``peak`` describe a channel of layer activations; ``faithfulness`` is set when asked for.
    Not frozen: a batch builds up to one per channel shown (128 for activations at batch 8), and
    a frozen dataclass's constructor costs three times as much.
    """

    method: str
    target: int | None
    values: torch.Tensor  # h x w
    channel: int | None = None
    mean: float | None = None
    peak: float | None = None
    faithfulness: Faithfulness | None = None


@dataclass
class SampleResult:
    """Class probabilities of one image and its explanations, in target order."""

    probabilities: torch.Tensor  # K
    explanations: list[Explanation] = field(default_factory=list)
    decision: Decision | None = None  # what the job's cost policy decided, when it had one
    # K, the prediction's logits: they rank the classes where probabilities tie (a saturated model's
    # softmax underflows to 0 for all but its top class), as the targets of top_classes are ranked
    logits: torch.Tensor | None = None


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
        channels: int = 3,
    ) -> None:
        self.device = torch.device(device)
        self.channels = channels  # of the model's input: 3 (RGB) or 1 (grayscale)
        model = model.to(self.device).eval().requires_grad_(False)
        example = torch.rand((1, channels, *input_size), generator=torch.Generator().manual_seed(0)).to(self.device)
        records, logits = trace_module_outputs(model, example)
        self.num_classes = int(logits.shape[1])
        self._norms = norm_modules(model)  # their one-image backward needs a fix (norm_gradients.py)
        with one_image_norms(self._norms, len(example)):  # the probes below take gradients of one image
            layer_name = target_layer or discover_target_layer(model, example, records)
            record = resolve_target_layer(model, layer_name, records, example)
            assert record.layout is not None
            fast = cam_fast_path and record.layout.kind == "nchw"
            head = detect_linear_head(model, record.module, example, records) if fast else None
            row_limits = find_row_limits(model, record.module, records, example) if head is None else ()
        layers = _map_layers(records)
        written = written_in_place(model, [record.module, *(layer.module for layer in layers.values())], example)
        self.explained = ExplainedModel(
            model,
            record.module,
            layer_name,
            record.layout,
            head,
            input_size,
            layers,
            limits or MethodLimits(),
            row_limits,
            written,
        )
        self.guided_note = self._guided_coverage(example)
        self._blank: torch.Tensor | None = None  # probabilities on a blank input (faithfulness.py), once asked

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
        cap = self.explained.limits.max_faithfulness_steps
        if job.faithfulness is not None and job.faithfulness.curves and not 2 <= job.faithfulness.steps <= cap:
            raise MethodError(
                f"option 'faithfulness_steps' must be from 2 to {cap} (max_faithfulness_steps), "
                f"got {job.faithfulness.steps}"
            )

    def forward_rows(self, job: Job) -> int:
        """Forward passes of one image that ``job`` costs at most (a backward counted as two), its method's
        and its faithfulness measure's: one per map, and the deletion / insertion images (a checked job)."""
        method = METHODS[job.method]
        maps = len(job.targets) or job.top_classes
        rows = method.forward_rows(self.explained, job.params, maps)
        if job.faithfulness is not None and method.class_specific:
            steps = job.faithfulness.steps if job.faithfulness.curves else 1
            rows += max(maps, 1) * (1 + 2 * (steps - 1))
        return rows

    def explain(self, images: torch.Tensor, jobs: Sequence[Job]) -> list[SampleResult]:
        """One forward pass per (method, params) group in the batch, then one for every map whose
        faithfulness is asked for (after the prediction, which it never changes); results in input order."""
        if len(images) != len(jobs):
            raise ValueError(f"{len(images)} images but {len(jobs)} jobs")
        for job in {id(job): job for job in jobs}.values():  # a batch often repeats one Job object
            self.check(job)
        images = images.to(self.device)
        groups: dict[tuple[str, MethodParams], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.method, job.params), []).append(i)
        if len(groups) == 1:  # the usual case: no copy of the batch
            results = self._run_group(images, list(jobs))
        else:
            ordered: list[SampleResult | None] = [None] * len(jobs)
            for rows in groups.values():
                for i, result in zip(rows, self._run_group(images[rows], [jobs[i] for i in rows]), strict=True):
                    ordered[i] = result
            results = [r for r in ordered if r is not None]
        if any(job.faithfulness is not None for job in jobs):
            self._measure_faithfulness(images, jobs, results)
        return results

    def _measure_faithfulness(self, images: torch.Tensor, jobs: Sequence[Job], results: list[SampleResult]) -> None:
        """Attach its faithfulness to every class-specific map whose job asks, all in one batched measure."""
        items, places = [], []
        for row, (job, result) in enumerate(zip(jobs, results, strict=True)):
            if job.faithfulness is None:
                continue
            steps = job.faithfulness.steps if job.faithfulness.curves else 0
            for position, item in enumerate(result.explanations):
                if item.target is not None and METHODS[item.method].class_specific:
                    confidence = float(result.probabilities[item.target])
                    items.append(MapToScore(row, item.target, item.values, confidence, steps))
                    places.append((row, position))
        if tuple(images.shape[-2:]) != self.input_size:  # not the usual size: the blank joins the batch
            measured_items = measure(self.model, images, items)
        else:
            if self._blank is None:  # the model's own, the same for every batch: measured once
                self._blank = blank_probabilities(self.model, images)
            measured_items = measure(self.model, images, items, self._blank)
        for (row, position), measured in zip(places, measured_items, strict=True):
            explanations = results[row].explanations
            explanations[position] = replace(explanations[position], faithfulness=measured)

    def _run_selected(self, images: torch.Tensor, jobs: list[Job]) -> list[SampleResult]:
        """Predict every row, then run the method on the rows the policies select only, so a
        skipped row costs its share of one plain forward (a selected one: that forward again)."""
        logits = predict(self.explained, images)
        decisions = _decisions(jobs, logits)
        probabilities = torch.softmax(logits.float(), dim=1)
        predicted = zip(probabilities, logits.detach(), decisions, strict=True)
        results = [SampleResult(p, decision=d, logits=row) for p, row, d in predicted]
        chosen = [i for i, decision in enumerate(decisions) if decision is None or decision.explained]
        if chosen:
            explained = self._run_group(images[chosen], [jobs[i] for i in chosen], apply_policy=False)
            for i, result in zip(chosen, explained, strict=True):
                result.decision = decisions[i]
                results[i] = result
        return results

    def _run_group(self, images: torch.Tensor, jobs: list[Job], apply_policy: bool = True) -> list[SampleResult]:
        method, params = METHODS[jobs[0].method], jobs[0].params
        policed = apply_policy and any(job.policy is not None for job in jobs)
        if policed and not method.resolves_in_prediction_pass:
            return self._run_selected(images, jobs)
        decisions: list[Decision | None] = [None] * len(jobs)

        def resolve(logits: torch.Tensor) -> list[list[int]]:
            k = min(max(job.top_classes for job in jobs), self.num_classes)
            top = logits.topk(k, dim=1).indices.tolist()
            targets = [list(job.targets) or top[i][: job.top_classes] for i, job in enumerate(jobs)]
            if policed:  # decided from this same pass: a skipped row gets no target, so no map
                decisions[:] = _decisions(jobs, logits)
                targets = [[] if d and not d.explained else t for d, t in zip(decisions, targets, strict=True)]
            return targets

        with one_image_norms(self._norms if method.backpropagates(self.explained) else [], len(images)):
            output = method.run(self.explained, images, resolve, params)
        probabilities = torch.softmax(output.logits.float(), dim=1)
        predicted = zip(probabilities, output.logits.detach(), decisions, strict=True)
        results = [SampleResult(p, decision=d, logits=row) for p, row, d in predicted]
        if output.maps is None:
            return results
        rows, indices, maps = output.slots.rows.tolist(), output.slots.targets.tolist(), output.maps.detach().unbind()
        if method.explains == "channel":
            assert output.stats is not None
            for row, index, values, (mean, peak) in zip(rows, indices, maps, output.stats.tolist(), strict=True):
                results[row].explanations.append(Explanation(method.name, None, values, index, mean, peak))
        else:
            class_specific = method.explains == "class"
            for row, index, values in zip(rows, indices, maps, strict=True):
                results[row].explanations.append(Explanation(method.name, index if class_specific else None, values))
        return results


def _decisions(jobs: Sequence[Job], logits: torch.Tensor) -> list[Decision | None]:
    """Each job's policy decision for its row of ``logits`` (None for a job without a policy)."""
    probabilities = torch.softmax(logits.detach().float(), dim=1)
    return decide_rows([job.policy for job in jobs], [draw(job.sample_key) for job in jobs], probabilities)
