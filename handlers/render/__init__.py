"""Encoders and renderers: heatmap grids, grayscale PNGs, jet overlays."""

from .colormap import jet
from .heatmap import normalise, resize_map, to_grid
from .images import overlay, png_base64

__all__ = ["jet", "normalise", "resize_map", "to_grid", "overlay", "png_base64"]
