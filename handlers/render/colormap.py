"""The jet colormap (dark blue = lowest, dark red = highest), matplotlib's definition."""

from __future__ import annotations

import numpy as np

# matplotlib's _jet_data: per channel, (position, value) breakpoints, linearly interpolated.
_JET = (
    ((0.0, 0.35, 0.66, 0.89, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),  # red
    ((0.0, 0.125, 0.375, 0.64, 0.91, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),  # green
    ((0.0, 0.11, 0.34, 0.65, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),  # blue
)


def jet(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to jet RGB, uint8 with a trailing channel axis."""
    v = np.clip(values, 0.0, 1.0)
    rgb = np.stack([np.interp(v, xs, ys) for xs, ys in _JET], axis=-1)
    return (rgb * 255.0 + 0.5).astype(np.uint8)
