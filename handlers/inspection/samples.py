"""Write the sample images shipped in ``handlers/inspection/samples/`` (README, curl examples).

``python -m handlers.inspection.samples``: one PNG per kind, from a seed used neither by
training nor by the test sets, so they are honest examples of unseen images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic import KINDS, render

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
SAMPLES_SEED = 77


def write_samples(directory: Path = SAMPLES_DIR, seed: int = SAMPLES_SEED) -> list[Path]:
    """Render one image per kind and save them as ``<kind>.png`` (``scratch+dent`` as ``scratch_dent``)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for kind in KINDS:
        path = directory / f"{kind.replace('+', '_')}.png"
        Image.fromarray(render(kind, rng).image).save(path, optimize=True)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR)
    args = parser.parse_args()
    for path in write_samples(args.out):
        print(path)


if __name__ == "__main__":
    main()
