"""Section 11: what the ``faithfulness`` option costs, relative to a plain prediction.

Grad-CAM as a request runs it (``Job("gradcam")``, the top class) on the benchmark models at
batch 8, without the option, with ``faithfulness=drop`` (one extra forward of every map and
a blank image) and with ``faithfulness=full`` (deletion and insertion in 8 steps: 14 more
forwards per map), interleaved with ``model(x)`` under ``torch.inference_mode()``. Each
variant's calls are repeated to last as long as the others (the full measure is ~15x a prediction).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from handlers.engine import Explainer, FaithfulnessParams, Job

from . import baselines
from .cases import BATCH, cases
from .engine_bench import explainers
from .monitor import ForeignLoad
from .report import Section, Target, ratio, seconds, table
from .settings import Settings
from .timing import calibrate_repeat, interleave

PLAIN = "plain prediction"
FLOOR = "two plain predictions"  # what one extra forward costs at best: the measure's floor
GOAL = 2.1  # gradcam + faithfulness=drop, prediction included (issue 13)
DROP = FaithfulnessParams()
FULL = FaithfulnessParams(curves=True)
VARIANTS: dict[str, tuple[str, int, FaithfulnessParams | None]] = {
    # name: (the request's options, maps per image, the engine's faithfulness parameters)
    "gradcam": ("faithfulness=off", 1, None),
    "gradcam + drop": ("faithfulness=drop", 1, DROP),
    "gradcam top 3 + drop": ("top_k_explanations=3, faithfulness=drop", 3, DROP),
    "gradcam + full": (f"faithfulness=full, {FULL.steps} steps", 1, FULL),
}


def _predict(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], object]:
    return lambda: baselines.predict(model, images)


def _predict_twice(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], object]:
    return lambda: (baselines.predict(model, images), baselines.predict(model, images))


def _call(explainer: Explainer, images: torch.Tensor, job: Job) -> Callable[[], object]:
    jobs = [job] * len(images)
    return lambda: explainer.explain(images, jobs)


def run(settings: Settings) -> Section:
    threads = torch.get_num_threads()
    clock = "CPU" if threads == 1 else "wall"
    section = Section(f"11. Faithfulness: the cost of the measure vs a plain prediction ({threads} torch thread(s))")
    section.add(
        f"Grad-CAM at batch {BATCH} with each `faithfulness` option, timed interleaved with a plain prediction of "
        f"the same batch; ratios of {clock} time per round: median (min–max), and of the best times, which the "
        f"verdict uses. Target: `faithfulness=drop` with its Grad-CAM and prediction ≤ {GOAL:.1f}x the prediction "
        "alone; two plain predictions in a row, timed the same way, are its floor (the measure needs one more "
        "forward of the batch). Forwards per image: the rows of the model's forwards in one call, counted after a "
        "first call (which also measures the blank image's probabilities, once per model)."
    )
    for case in cases(settings.engine_models):
        explainer, _ = explainers(case)
        images = case.images(BATCH)
        calls: dict[str, Callable[[], object]] = {
            PLAIN: _predict(case.model, images),
            FLOOR: _predict_twice(case.model, images),
        }
        for name, (_, maps, params) in VARIANTS.items():
            calls[name] = _call(explainer, images, Job("gradcam", top_classes=maps, faithfulness=params))
        rows_per_call = {name: _forward_rows(explainer, call) for name, call in calls.items() if name in VARIANTS}
        repeats = {name: calibrate_repeat(call, settings.engine_min_call_s) for name, call in calls.items()}
        with ForeignLoad() as load:
            wall, cpu = interleave(
                calls,
                **settings.engine_rounds,
                repeat=repeats,
            )
        deciding = cpu if threads == 1 else wall
        rows = [[PLAIN, "-", seconds(wall.stats(PLAIN)), "1x", "1x", "1"]]
        shown = [(FLOOR, "-", "2")]
        shown += [(name, options, f"{rows_per_call[name] / BATCH:g}") for name, (options, _, _) in VARIANTS.items()]
        for name, options, forwards in shown:
            rows.append(
                [
                    name,
                    options,
                    seconds(wall.stats(name)),
                    ratio(deciding.ratio(name, PLAIN)),
                    f"{deciding.best_ratio(name, PLAIN):.2f}x",
                    forwards,
                ]
            )
        section.add(
            f"### {case.name} ({case.input_size[0]}x{case.input_size[1]}): batch {BATCH}, {wall.rounds} rounds; "
            f"{load.summary().describe()}",
            table(
                [
                    "variant",
                    "options",
                    "wall ms per batch",
                    f"ratio ({clock})",
                    f"best-time ratio ({clock})",
                    "forwards per image",
                ],
                rows,
            ),
        )
        best = deciding.best_ratio("gradcam + drop", PLAIN)
        floor = deciding.best_ratio(FLOOR, PLAIN)
        median = deciding.ratio("gradcam + drop", PLAIN).median
        section.targets.append(
            Target(
                f"faithfulness {case.name}: gradcam + faithfulness=drop vs prediction",
                f"≤ {GOAL:.1f}x",
                f"{best:.2f}x best {clock} time (floor, two plain predictions: {floor:.2f}x; "
                f"median of rounds {median:.2f}x)",
                best <= GOAL,
                load.summary().disturbed,
            )
        )
    return section


def _forward_rows(explainer: Explainer, call: Callable[[], object]) -> int:
    """Rows of every forward of the explained model during one ``call()``, after a first one."""
    call()
    rows = [0]

    def count(_module: object, _inputs: object, output: torch.Tensor) -> None:
        rows[0] += len(output)

    handle = explainer.model.register_forward_hook(count)
    try:
        call()
    finally:
        handle.remove()
    return rows[0]
