"""Encoders and renderers: heatmap grids, grayscale PNGs, jet overlays."""

from .colormap import jet
from .heatmap import normalise, resize_map, to_grid
from .images import overlay, png_base64

__all__ = ["jet", "normalise", "overlay", "png_base64", "resize_map", "to_grid"]
