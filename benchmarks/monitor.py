"""How much of the machine other people's processes used while a benchmark ran.

The machine is shared: a section measured while a neighbour trains a model is noisy.
``ForeignLoad`` samples /proc/stat (all CPU time) and the CPU time of this process and
every live descendant (the TorchServe servers it started) once a second; the difference
is CPU used by everyone else, reported in cores, so each table can say how disturbed it
was. Wrap measurements only: a helper process that starts and exits between two samples
(e.g. the MAR archiver) would be counted as foreign.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass

import psutil

_TICKS = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds spent not idle, over all cores, since boot."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / _TICKS


def _own_cpu(seen: dict[int, float]) -> float:
    """CPU seconds used since the last call by this process and its descendants."""
    me = psutil.Process()
    used = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total = times.user + times.system
        used += total - seen.get(process.pid, 0.0)  # a new process: all its time is new
        seen[process.pid] = total
    return used


@dataclass(frozen=True)
class LoadSummary:
    """CPU used by other processes during a section, in cores."""

    mean_cores: float
    max_cores: float
    cores: int

    @property
    def disturbed(self) -> bool:
        """More than a fifth of a core taken by others on average: absolute numbers are noisy."""
        return self.mean_cores > 0.2

    def describe(self) -> str:
        verdict = "DISTURBED, compare ratios only" if self.disturbed else "quiet"
        return (
            f"other processes used {self.mean_cores:.2f} cores on average (max {self.max_cores:.2f}) "
            f"of {self.cores}: {verdict}"
        )


class ForeignLoad:
    """Context manager sampling foreign CPU use in a daemon thread."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self.own_s = 0.0  # CPU seconds used by this process tree while sampling
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foreign-load", daemon=True)

    def _run(self) -> None:
        seen: dict[int, float] = {}
        _own_cpu(seen)
        busy, clock = _machine_busy_s(), time.monotonic()
        while not self._stop.wait(self.interval_s):
            own = _own_cpu(seen)
            self.own_s += own
            now_busy, now = _machine_busy_s(), time.monotonic()
            self.samples.append(max(0.0, (now_busy - busy - own) / (now - clock)))
            busy, clock = now_busy, now

    def __enter__(self) -> ForeignLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> LoadSummary:
        samples = self.samples or [0.0]
        return LoadSummary(statistics.fmean(samples), max(samples), os.cpu_count() or 1)
