"""Markdown pieces of RESULTS.md: tables, the machine description, target verdicts."""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .timing import Stats


@dataclass(frozen=True)
class Target:
    """One required bound (e.g. gradcam <= 1.10x a prediction), judged on what a section measured."""

    name: str
    goal: str
    measured: str
    met: bool
    disturbed: bool = False

    def row(self) -> list[str]:
        verdict = "met" if self.met else "MISSED"
        return [self.name, self.goal, self.measured, verdict + (" (noisy run)" if self.disturbed else "")]


@dataclass
class Section:
    """A titled block of markdown plus the targets it decides."""

    title: str
    body: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def add(self, *blocks: str) -> None:
        self.body.extend(blocks)

    def markdown(self) -> str:
        return "\n\n".join([f"## {self.title}", *self.body])


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are str()-ed."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def seconds(stats: Stats) -> str:
    """``median (min–max)`` in milliseconds."""
    return f"{stats.median * 1e3:.1f} ({stats.low * 1e3:.1f}–{stats.high * 1e3:.1f})"


def ratio(stats: Stats) -> str:
    """``1.02x (0.98–1.07)``."""
    return f"{stats.median:.2f}x ({stats.low:.2f}–{stats.high:.2f})"


def megabytes(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MB"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    """One paragraph: date, CPU, cores, memory, torch and its thread count (call it at the start)."""
    import psutil

    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"Date: {now}. Machine: {cpu_model()}, {os.cpu_count()} logical cores, {memory:.0f} GiB RAM, "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads in the benchmark process), load average at start "
        f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())}."
    )


def targets_table(targets: Sequence[Target]) -> str:
    return table(["target", "goal", "measured", "verdict"], [t.row() for t in targets])
