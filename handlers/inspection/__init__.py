"""The embedded default model: a small CNN for synthetic metal-surface inspection.

``synthetic`` renders the deterministic dataset (with per-defect pixel masks, so maps
can be checked against ground truth), ``network`` holds the CNN and ``train`` fits it.
Only constants live here so that every submodule can import them without cycles.
"""

from pathlib import Path

CLASSES = ("ok", "scratch", "dent")  # index order is the model's output order
IMAGE_SIZE = 128  # side of a generated image, in pixels
INPUT_SIZE = 128  # side of the model input; equal to IMAGE_SIZE, so no resampling
# Per-channel pixel statistics of the generated images (measured on 600 of them, rounded),
# for (x - MEAN) / STD on [0, 1] RGB.
MEAN = (0.500, 0.501, 0.500)
STD = (0.106, 0.107, 0.107)
WEIGHTS_FILE = Path(__file__).resolve().parent / "inspection.pth"
