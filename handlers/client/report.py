"""What the user sees on the terminal: a progress line while working, a summary table at the end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .pipeline import Result, explained

BAR_WIDTH = 30
HEADER = ("FILE", "TOP LABEL", "PROB", "EXPLAINED", "STATUS")


class Progress:
    """A self-updating ``[####----] done/total`` line; silent unless ``enabled`` (a TTY, folder input)."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.done = 0
        self.failed = 0

    def advance(self, ok: bool) -> None:
        """Count one finished image and redraw the line."""
        self.done += 1
        self.failed += not ok
        if not self.enabled:
            return
        filled = BAR_WIDTH * self.done // max(self.total, 1)
        failed = f", {self.failed} failed" if self.failed else ""
        self.stream.write(f"\r[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {self.done}/{self.total} images{failed}")
        self.stream.flush()

    def close(self) -> None:
        """End the line so the next output starts on a fresh one."""
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()


def _row(result: Result, root: Path) -> tuple[str, ...]:
    try:
        name = str(result.path.relative_to(root))
    except ValueError:
        name = str(result.path)
    if not result.ok or result.answer is None:
        return (name, "-", "-", "-", f"FAILED: {result.error}")
    top = result.answer["predictions"][0]
    return (name, str(top["label"]), f"{float(top['probability']):.4f}", _explained_cell(result.answer), "ok")


def _explained_cell(answer: dict[str, Any]) -> str:
    """The EXPLAINED column: the classes explained, or what a class-agnostic answer shows (N channels, image)."""
    entries = answer.get("explanations", [])
    if len(entries) > 1 and all(entry.get("channel") is not None for entry in entries):
        return f"{len(entries)} channels"
    return ", ".join(explained(entry) + _faithfulness(entry) for entry in entries) or "-"


def _faithfulness(entry: dict[str, Any]) -> str:
    """ " (faithfulness 0.97)" when the answer measured it (n/a where it has no score), else nothing."""
    measured = entry.get("faithfulness")
    if not isinstance(measured, dict):
        return ""
    score = measured.get("score")
    return f" (faithfulness {float(score):.2f})" if isinstance(score, (int, float)) else " (faithfulness n/a)"


def summary(results: Sequence[Result], root: Path, out_dir: Path) -> str:
    """The table (one row per image, in input order) and a closing count line."""
    rows = [HEADER, *(_row(result, root) for result in results)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADER) - 1)]
    lines = [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
        for row in rows
    ]
    failed = sum(not result.ok for result in results)
    lines.append(f"{len(results)} image(s): {len(results) - failed} ok, {failed} failed; outputs in {out_dir}")
    return "\n".join(lines)
