"""README pictures of maps on the user's own pictures: one original-size overlay, a strip of an explained video.

``python -m handlers.evaluation.original_examples`` writes ``docs/images/original_overlay.png``
(a photo stored turned under an EXIF tag, the model's view with the server's overlay, the map
on the upright original at its size, the part the model never saw hatched) and
``docs/images/video_strip.png`` (frames of the generated line video with their maps and
records). Maps come from the engine on the server's own decoding and preprocessing, the same
maps TorchServe serves for these files; the drawing is the client's (``handlers.render.original``).
Same code, same pictures.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..engine import Explainer, Job
from ..inspection import CLASSES, INPUT_SIZE, MEAN, STD, scenes, synthetic
from ..preprocess import InputSpec, Preprocessor
from ..render import normalise, overlay
from ..render.original import overlay_on_original, peak
from ..serving.decode import decode
from .data import default_model

OUT = Path(__file__).resolve().parents[2] / "docs" / "images"
# The default network packed as ImageNet models are served: shorter side to 150, centre crop 128. On an
# 800 x 600 photo it sees the box (144, 44, 656, 556): the sample is enlarged 4x into it.
CROP_SPEC = InputSpec(resize=150, crop=INPUT_SIZE, mean=MEAN, std=STD)
EXACT_SPEC = InputSpec(resize=(INPUT_SIZE, INPUT_SIZE), mean=MEAN, std=STD)
PHOTO_SIZE = (800, 600)
PHOTO_BOX = (144, 44, 656, 556)
PHOTO_SEED = 20261129
VIDEO_SEED = 20261127  # the video of tests/integration/test_video.py
VIDEO_SIZE = (256, 192)
VIDEO_FRAMES = 48
VIDEO_FPS = 10
STRIP_FRAMES = (4, 12, 18, 25, 40)  # plain, the scratch at three places, the dent
PANEL_HEIGHT = 300
CAPTION = 40
MARGIN = 8
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MAX_PIXELS = 40_000_000


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=14)


def explained(explainer: Explainer, preprocessor: Preprocessor, data: bytes) -> tuple[dict, Image.Image, np.ndarray]:
    """What the server does with a file: (top prediction and the box, the model's view, the Grad-CAM map in [0, 1])."""
    decoded = decode(data, MAX_PIXELS, reduce_to=preprocessor.decode_size())
    view = preprocessor.view(decoded.image)
    (result,) = explainer.explain(preprocessor.tensor(view)[None], [Job("gradcam")])
    probabilities = result.probabilities.float()
    top = int(probabilities.argmax())
    heatmap = normalise(result.explanations[0].values.detach().float()).numpy()
    about = {
        "label": CLASSES[top],
        "probability": float(probabilities[top]),
        "box": preprocessor.box(decoded.original_size),
    }
    return about, view, heatmap


def _captioned(picture: Image.Image, lines: list[str], height: int) -> Image.Image:
    """``picture`` scaled to ``height`` with caption lines under it."""
    width = round(picture.width * height / picture.height)
    panel = Image.new("RGB", (width, height + CAPTION), BACKGROUND)
    panel.paste(picture.resize((width, height), Image.Resampling.LANCZOS), (0, 0))
    draw = ImageDraw.Draw(panel)
    for i, line in enumerate(lines):
        draw.text((4, height + 4 + 17 * i), line, fill=INK, font=_font())
    return panel


def _row(panels: list[Image.Image]) -> Image.Image:
    width = sum(p.width for p in panels) + MARGIN * (len(panels) + 1)
    row = Image.new("RGB", (width, max(p.height for p in panels) + 2 * MARGIN), BACKGROUND)
    x = MARGIN
    for panel in panels:
        row.paste(panel, (x, MARGIN))
        x += panel.width + MARGIN
    return row


def original_overlay(explainer: Explainer) -> Image.Image:
    """Photo as viewed | the model's 128 px view with the server's overlay | the map on the original."""
    rng = np.random.default_rng(PHOTO_SEED)
    sample, background = synthetic.render("scratch", rng), synthetic.render("scratch", rng)
    taken = scenes.photo(sample, PHOTO_SIZE, PHOTO_BOX, background, orientation=6)
    about, view, heatmap = explained(explainer, Preprocessor(CROP_SPEC), taken.data)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(taken.data))).convert("RGB")
    x0, y0, x1, y1 = (round(v) for v in about["box"])
    return _row(
        [
            _captioned(upright, [f"the photo, {upright.width}x{upright.height}", "(stored turned, EXIF 6)"], 300),
            _captioned(
                overlay(view, torch.from_numpy(heatmap)).resize((300, 300), Image.Resampling.NEAREST),
                [f"the model's view, {INPUT_SIZE} px", f"{about['label']} {about['probability']:.2f}"],
                300,
            ),
            _captioned(
                overlay_on_original(upright, heatmap, about["box"]),
                ["--on original: map in the box", f"({x0}, {y0})-({x1}, {y1}); the rest not seen"],
                300,
            ),
        ]
    )


def video_strip(explainer: Explainer) -> Image.Image:
    """A few frames of the explained line video, each with its record (time, label, probability, peak)."""
    frames = scenes.footage(VIDEO_SEED, VIDEO_SIZE, VIDEO_FRAMES)
    preprocessor = Preprocessor(EXACT_SPEC)
    panels = []
    for index in STRIP_FRAMES:
        picture = Image.fromarray(frames[index].image)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=95)  # as the video client sends frames
        about, _, heatmap = explained(explainer, preprocessor, buffer.getvalue())
        x, y = peak(heatmap, about["box"])
        lines = [
            f"t={index / VIDEO_FPS:.1f} s  {about['label']} {about['probability']:.2f}",
            f"peak ({x:.0f}, {y:.0f})",
        ]
        panels.append(_captioned(overlay_on_original(picture, heatmap, about["box"]), lines, VIDEO_SIZE[1]))
    return _row(panels)


def main(argv: list[str] | None = None) -> None:
    """Write both pictures into ``--out`` (default docs/images)."""
    parser = argparse.ArgumentParser(prog="python -m handlers.evaluation.original_examples", description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    explainer = Explainer(default_model(), (INPUT_SIZE, INPUT_SIZE))
    args.out.mkdir(parents=True, exist_ok=True)
    original_overlay(explainer).save(args.out / "original_overlay.png", optimize=True)
    video_strip(explainer).save(args.out / "video_strip.png", optimize=True)


if __name__ == "__main__":
    main()
