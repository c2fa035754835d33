"""Interleaved timing: every variant once per round, in rotating order, over several rounds.

On a shared machine the background load drifts during a run. Timing the variants in
alternation, and dividing each by the reference *of the same round*, keeps ratios
meaningful even while absolute times move; rotating the start order removes any
advantage of going first (caches, turbo, a neighbour's burst).

Each measurement records wall time and the process's CPU time. With one torch thread
the work runs on the calling thread (CPU autograd too), so CPU time is its compute cost
whether or not a neighbour preempted it. It still grows when a neighbour competes for
caches and memory bandwidth; that noise only ever adds time, so the ratio of the best
(minimum) times is the steadiest estimate on a busy machine (as ``timeit`` advises).
With several threads CPU time also counts OpenMP spin-waiting: only wall time means much.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    """Median and range of a few measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        return cls(statistics.median(values), min(values), max(values), len(values))


@dataclass(frozen=True)
class Timings:
    """Seconds per call of each variant, one value per round, rounds aligned across variants."""

    seconds: dict[str, list[float]]

    @property
    def rounds(self) -> int:
        return min(len(values) for values in self.seconds.values())

    def stats(self, name: str) -> Stats:
        return Stats.of(self.seconds[name])

    def ratio(self, name: str, reference: str) -> Stats:
        """Per-round ratios name / reference (paired, so shared drift cancels)."""
        return Stats.of([a / b for a, b in zip(self.seconds[name], self.seconds[reference], strict=True)])

    def best_ratio(self, name: str, reference: str) -> float:
        """Ratio of the best (minimum) times: each variant's least disturbed measurement."""
        return min(self.seconds[name]) / min(self.seconds[reference])


def time_call(fn: Callable[[], object], repeat: int = 1) -> tuple[float, float]:
    """Mean (wall, CPU) seconds of ``fn()`` over ``repeat`` back-to-back calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - wall) / repeat, (time.process_time() - cpu) / repeat


def calibrate_repeat(fn: Callable[[], object], target_s: float) -> int:
    """Calls per measurement so one measurement of ``fn`` lasts about ``target_s``."""
    return max(1, math.ceil(target_s / max(time_call(fn)[0], 1e-6)))


def interleave(
    variants: Mapping[str, Callable[[], object]],
    *,
    min_rounds: int,
    max_rounds: int,
    budget_s: float,
    warmup: int = 1,
    repeat: int | Mapping[str, int] = 1,
) -> tuple[Timings, Timings]:
    """Round-robin (wall, CPU) timings of ``variants``: at least ``min_rounds``, more within ``budget_s``.

    ``repeat``: calls per measurement, one count for all or one per variant (variants whose
    calls differ a hundredfold in length each need their own to be measured for long enough).
    """
    names = list(variants)
    repeats = repeat if isinstance(repeat, Mapping) else dict.fromkeys(names, repeat)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    start = time.monotonic()
    rounds = 0
    while rounds < min_rounds or (rounds < max_rounds and time.monotonic() - start < budget_s):
        order = names[rounds % len(names) :] + names[: rounds % len(names)]
        for name in order:
            spent = time_call(variants[name], repeats[name])
            wall[name].append(spent[0])
            cpu[name].append(spent[1])
        rounds += 1
    return Timings(wall), Timings(cpu)
