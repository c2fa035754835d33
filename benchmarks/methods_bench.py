"""Section 5: what every method of the engine's registry costs, relative to a plain prediction.

The methods come from ``METHODS``: one added to the registry appears here without any edit.
Each is run as a request would run it (``Job(method)``: the top class, default options) on
the benchmark models, interleaved with ``model(x)`` under ``torch.inference_mode()``
(``timing.interleave``). The layer-map methods (the gradient-CAM family, EigenCAM,
activations) are timed twice: on the CAM path (pool + linear head: no backward) and with
``cam_fast_path=False``, as a model with any other head runs them.

Passes are stated by each method (``Method.passes``) and counted: a forward hook on the
model adds up the rows of every forward, and a hook on the logits of each forward that
records a graph adds up the rows of every backward through them. Methods needing more than
one forward per image (occlusion, integrated gradients) are timed apart, against a plain
prediction of the same smaller batch, so one call stays bounded on resnet50.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from handlers.engine import METHODS, Explainer, Job, Method

from . import baselines
from .cases import BATCH, Case, cases
from .engine_bench import explainers
from .monitor import ForeignLoad, LoadSummary
from .report import Section, Target, ratio, seconds, table
from .settings import Settings
from .timing import Timings, calibrate_repeat, interleave, time_call

PLAIN = "plain prediction"
CAM_PATH = "CAM path (pool + linear)"
FORCED_PATH = "autograd (cam_fast_path=False)"
OWN_PATH = "its own passes"


def headers(clock: str) -> list[str]:
    """Columns of the tables; ``clock`` is the time the ratios use (CPU with one torch thread)."""
    return [
        "method",
        "path",
        "batch",
        "wall ms per batch",
        f"ratio ({clock})",
        f"best-time ratio ({clock})",
        "passes (the method's words)",
        "passes per image (counted)",
        "target",
        "verdict",
    ]


# Bounds of the single-pass layer-map methods (one forward per image), per path.
GOALS = {CAM_PATH: 1.10, FORCED_PATH: 1.15}


@dataclass
class PassCount:
    """Rows of every forward and of every backward through the logits, during some calls."""

    forward_rows: int = 0
    backward_rows: int = 0

    def per_image(self, images: int) -> str:
        return f"{self.forward_rows / images:g} fwd + {self.backward_rows / images:g} bwd"


@contextmanager
def counting_passes(model: nn.Module) -> Iterator[PassCount]:
    """Count the passes ``model`` runs inside the block (batched rows, so per image once divided)."""
    count = PassCount()

    def on_backward(gradient: torch.Tensor) -> None:
        count.backward_rows += len(gradient)

    def on_forward(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        count.forward_rows += len(output)
        if output.requires_grad:
            output.register_hook(on_backward)

    handle = model.register_forward_hook(on_forward)
    try:
        yield count
    finally:
        handle.remove()


@dataclass(frozen=True)
class Variant:
    """One method on one explainer (path), with its passes counted on one image."""

    method: Method
    path: str
    explainer: Explainer
    passes: PassCount
    seconds_per_image: float  # one probe call at batch 1: sizes the many-pass batch

    @property
    def label(self) -> str:
        return f"{self.method.name}, {self.path}"

    @property
    def single_pass(self) -> bool:
        return self.passes.forward_rows == 1

    @property
    def goal(self) -> float | None:
        """The bound this variant is held to: single-pass layer maps only."""
        judged = self.single_pass and self.method.explains != "nothing" and self.method.resolution == "layer"
        return GOALS.get(self.path) if judged else None

    def call(self, images: torch.Tensor) -> Callable[[], object]:
        jobs = [Job(self.method.name)] * len(images)
        return lambda: self.explainer.explain(images, jobs)


def paths(method: Method, explainer: Explainer, forced: Explainer) -> list[tuple[str, Explainer]]:
    """The explainers ``method`` is timed on: both paths for layer maps, else the default one."""
    if method.explains == "nothing" or method.resolution != "layer" or not explainer.uses_cam_fast_path:
        return [(OWN_PATH, explainer)]
    return [(CAM_PATH, explainer), (FORCED_PATH, forced)]


def probe(method: Method, path: str, explainer: Explainer, image: torch.Tensor) -> Variant:
    """Run ``method`` once on one image, counting its passes and timing it (after one warm-up call)."""
    call = Variant(method, path, explainer, PassCount(), 0.0).call(image)
    call()
    with counting_passes(explainer.model) as count:
        spent = time_call(call)[0]
    return Variant(method, path, explainer, count, spent)


def many_pass_batch(variants: list[Variant], call_s: float) -> int:
    """The largest batch (<= 8) at which the slowest many-pass variant's call should last <= ``call_s``."""
    slowest = max(v.seconds_per_image for v in variants)
    return max(1, min(BATCH, math.floor(call_s / slowest)))


@dataclass(frozen=True)
class Measured:
    """Timings of one interleaved group of variants and the plain prediction of the same batch."""

    variants: list[Variant]
    batch: int
    wall: Timings
    cpu: Timings
    load: LoadSummary


def measure(
    model: nn.Module, variants: list[Variant], images: torch.Tensor, settings: Settings, *, many_pass: bool
) -> Measured:
    """Time ``variants`` on ``images`` interleaved with the plain prediction of the same batch."""
    calls: dict[str, Callable[[], object]] = {PLAIN: lambda: baselines.predict(model, images)}
    calls.update({v.label: v.call(images) for v in variants})
    if many_pass:  # calls a hundredfold longer than the prediction: each is repeated to last long enough
        repeats = {name: calibrate_repeat(call, settings.engine_min_call_s) for name, call in calls.items()}
        rounds = (settings.many_pass_min_rounds, settings.many_pass_max_rounds)
    else:
        repeats = dict.fromkeys(calls, calibrate_repeat(calls[PLAIN], settings.engine_min_call_s))
        rounds = (settings.engine_min_rounds, settings.engine_max_rounds)
    with ForeignLoad() as load:
        wall, cpu = interleave(
            calls,
            min_rounds=rounds[0],
            max_rounds=rounds[1],
            budget_s=settings.engine_budget_s,
            warmup=0 if many_pass else 1,  # many-pass: the probe and the calibration warmed every variant up
            repeat=repeats,
        )
    return Measured(variants, len(images), wall, cpu, load.summary())


def rows(measured: Measured, deciding: Timings) -> list[list[str]]:
    """Table rows of one group: its plain prediction, then each variant with its target and verdict."""
    plain = seconds(measured.wall.stats(PLAIN))
    out = [[PLAIN, "model(x), inference_mode", str(measured.batch), plain, "1x", "1x", "1 forward", "", "", ""]]
    for v in measured.variants:
        best = deciding.best_ratio(v.label, PLAIN)
        goal = v.goal
        out.append(
            [
                v.method.name,
                v.path,
                str(measured.batch),
                seconds(measured.wall.stats(v.label)),
                ratio(deciding.ratio(v.label, PLAIN)),
                f"{best:.2f}x",
                v.method.passes,
                v.passes.per_image(1),
                f"≤ {goal:.2f}x" if goal else "none",
                ("met" if best <= goal else "MISSED") if goal else "",
            ]
        )
    return out


def targets(case: Case, measured: Measured, deciding: Timings, clock: str) -> list[Target]:
    """Per path, one target over all its single-pass layer-map methods: the worst one decides."""
    found = []
    for path, goal in GOALS.items():
        judged = [
            (deciding.best_ratio(v.label, PLAIN), v.method.name)
            for v in measured.variants
            if v.path == path and v.goal is not None
        ]
        if not judged:
            continue
        worst, name = max(judged)
        misses = [f"{n} {b:.3f}x" for b, n in judged if b > goal]
        found.append(
            Target(
                f"engine {case.name}: every single-pass layer method, {path}",
                f"≤ {goal:.2f}x",
                f"worst: {name} {worst:.2f}x best {clock} time ({len(judged)} methods)"
                + (f"; over: {', '.join(misses)}" if misses else ""),
                not misses,
                measured.load.disturbed,
            )
        )
    return found


def variants(case: Case) -> tuple[list[Variant], list[str]]:
    """Every (method, path) of the registry, probed on one image, and those a path does not offer."""
    explainer, forced = explainers(case)
    image = case.images(1)
    found, missing = [], []
    for method in METHODS.values():
        for path, which in paths(method, explainer, forced):
            if method.name in which.methods:
                found.append(probe(method, path, which, image))
            else:
                missing.append(f"`{method.name}` on the {path} path")
    return found, missing


def run(settings: Settings) -> Section:
    threads = torch.get_num_threads()
    clock = "CPU" if threads == 1 else "wall"
    section = Section(f"5. Engine: every method of the registry vs a plain prediction ({threads} torch thread(s))")
    section.add(
        "Every method in `handlers/engine/methods` `METHODS`, as a request runs it (`Job(method)`: the top "
        "class, default options), timed interleaved with a plain prediction of the same batch; ratios of CPU "
        f"time per round: median (min–max), and of the best {clock} times, which the verdicts use. "
        "Layer-map methods are timed on both paths: the CAM path (pool + linear head: no backward) and "
        "the autograd path (`cam_fast_path=False`: one head-only backward), as a model with another head "
        f"runs them. Single-pass layer methods must stay ≤ {GOALS[CAM_PATH]:.2f}x on the CAM path and ≤ "
        f"{GOALS[FORCED_PATH]:.2f}x on the autograd path. Passes: the method's own words, and counted on one "
        "image (rows of every forward of the model; rows of every backward through its logits). Methods "
        "with more than one forward per image are timed in a second group, at the largest batch ≤ "
        f"{BATCH} whose call should last ≤ {settings.many_pass_call_s:g} s (from the one-image probe), "
        "against a plain prediction of that batch; Captum's occlusion also runs one unperturbed forward "
        "of its own, counted."
    )
    for case in cases(settings.engine_models):
        probed, missing = variants(case)
        for many_pass in (False, True):
            group = [v for v in probed if v.single_pass != many_pass]
            if not group:
                continue
            batch = many_pass_batch(group, settings.many_pass_call_s) if many_pass else BATCH
            measured = measure(case.model, group, case.images(batch), settings, many_pass=many_pass)
            deciding = measured.cpu if threads == 1 else measured.wall
            kind = "more than one forward per image" if many_pass else "one forward per image"
            section.add(
                f"### {case.name} ({case.input_size[0]}x{case.input_size[1]}), {kind}: batch {batch}, "
                f"{measured.wall.rounds} rounds; {measured.load.describe()}",
                table(headers(clock), rows(measured, deciding)),
            )
            section.targets.extend(targets(case, measured, deciding, clock))
        if missing:
            section.add(f"Not offered on {case.name} (the method's `available` says no): {', '.join(missing)}.")
    return section
