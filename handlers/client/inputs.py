"""Which files to send, and the output name (stem) of each one."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})


def scan_folder(folder: Path) -> list[Path]:
    """Image files (by suffix) under ``folder``, recursively, hidden ones skipped, sorted."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def collect(paths: Sequence[Path]) -> list[Path]:
    """Files given by name (always sent, whatever their suffix) and the images in folders; no duplicates.

    Raises FileNotFoundError for a path that does not exist, PermissionError for a file that cannot be read.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(scan_folder(path))
        elif path.is_file():
            if not os.access(path, os.R_OK):
                raise PermissionError(f"cannot read {path}: permission denied")
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return list(dict.fromkeys(found))


def output_stems(paths: Iterable[Path]) -> dict[Path, str]:
    """A distinct output stem per file: its own stem, then ``stem.ext``, then ``stem-2``, ... on clashes."""
    stems: dict[Path, str] = {}
    taken: set[str] = set()
    for path in paths:
        candidates = [path.stem, path.name] + [f"{path.stem}-{n}" for n in range(2, len(taken) + 3)]
        stem = next(name for name in candidates if name not in taken)
        taken.add(stem)
        stems[path] = stem
    return stems
