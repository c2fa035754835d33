"""Encoders and renderers: heatmap grids, grayscale PNGs, jet overlays, channel mosaics."""

from .colormap import jet
from .heatmap import normalise, resize_map
from .images import overlay, png_base64, tiles

__all__ = ["jet", "normalise", "overlay", "png_base64", "resize_map", "tiles"]
