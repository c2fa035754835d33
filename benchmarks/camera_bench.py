"""Camera-size JPEGs end to end (section 10): a 12 MP picture vs a 0.3 MP one, and the maps.

Inspection cameras send 5-20 MP JPEGs. The server decodes JPEGs at a reduced DCT scale
(draft mode: at least twice the model's input), so most of the 12 MP image is never turned
into pixels; its entropy-coded data must still be read in full. This section sends both sizes
of the same scene to a real TorchServe in alternating windows (Grad-CAM, closed loop) and
reports the cost of a 12 MP request relative to a 0.3 MP one, then compares the maps and
overlays of reduced and full decoding of the 12 MP picture.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from handlers.engine import Explainer, Job
from handlers.inspection import INPUT_SIZE
from handlers.inspection.synthetic import INPUT_SPEC, make_dataset
from handlers.preprocess import InputSpec, Preprocessor
from handlers.render import normalise, overlay, resize_map
from handlers.serving.decode import DecodeLimits, decode_image

from .artifacts import build_ours
from .cases import inspection_model, random_resnet50, save_random_resnet50
from .load import Shot, Window, run_window
from .monitor import ForeignLoad
from .report import Section, Target, table
from .server import BenchServer
from .settings import Settings

CAMERA = (4000, 3000)  # 12 MP
SMALL = (640, 480)  # 0.3 MP
GOAL = 1.5  # a 12 MP request costs at most this many 0.3 MP ones
GRAIN = 3.0  # sensor noise (levels of 255): what makes camera JPEGs large
LIMITS = DecodeLimits(max_jpeg_scans=100, timeout_s=30.0)
MAX_PIXELS = 40_000_000
TORCHVISION_SPEC = InputSpec(resize=256, crop=224)  # what the archive CLI gives torchvision models


@dataclass(frozen=True)
class Pictures:
    """The same scene as a 12 MP and a 0.3 MP JPEG (quality 90)."""

    camera: bytes
    small: bytes


def camera_jpeg(scene: np.ndarray, size: tuple[int, int], seed: int) -> bytes:
    """``scene`` enlarged bicubically to ``size`` with seeded sensor grain, as JPEG quality 90."""
    enlarged = np.asarray(Image.fromarray(scene).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    grain = np.random.default_rng(seed).normal(0.0, GRAIN, enlarged.shape).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(enlarged + grain, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def pictures() -> Pictures:
    """A scratched surface of the synthetic inspection data at both sizes."""
    scene = make_dataset(1, seed=2026, kinds=("scratch",))[0].image
    return Pictures(camera_jpeg(scene, CAMERA, 1), camera_jpeg(scene, SMALL, 2))


def map_difference(data: bytes, model: torch.nn.Module, preprocessor: Preprocessor, size: int) -> tuple[float, float]:
    """Grad-CAM of reduced vs full decoding of ``data``: max difference of the max-normalised maps,
    and the mean absolute difference of the overlays (levels of 255)."""
    explainer = Explainer(model, (size, size))
    views, maps = [], []
    for reduce in (preprocessor.decode_size(), None):
        view = preprocessor.view(decode_image(data, MAX_PIXELS, reduce_to=reduce, limits=LIMITS))
        result = explainer.explain(preprocessor.tensor(view)[None], [Job("gradcam")])[0]
        views.append(view)
        maps.append(normalise(result.explanations[0].values))
    overlays = [
        np.asarray(overlay(view, resize_map(m, (view.height, view.width))), dtype=np.float32)
        for view, m in zip(views, maps, strict=True)
    ]
    return float((maps[0] - maps[1]).abs().max()), float(np.abs(overlays[0] - overlays[1]).mean())


def alternate(shots: dict[str, Shot], settings: Settings, rounds: int) -> dict[str, list[Window]]:
    """Windows of each picture size in turn, ``rounds`` times, after a warm-up of each."""
    concurrency = 4
    for shot in shots.values():
        run_window([shot], concurrency, settings.warmup_window_s, max_requests=settings.max_requests_per_window)
    windows: dict[str, list[Window]] = {name: [] for name in shots}
    for r in range(rounds):
        for name in list(shots)[r % 2 :] + list(shots)[: r % 2]:
            windows[name].append(
                run_window([shots[name]], concurrency, settings.window_s, max_requests=settings.max_requests_per_window)
            )
    return windows


def run(settings: Settings, workdir: Path) -> Section:
    section = Section("10. Camera-size JPEGs: 12 MP vs 0.3 MP end to end, and the maps")
    images = pictures()
    models = ("inspection",) if settings.name == "quick" else ("inspection", "resnet50")
    rounds = max(2, settings.e2e_rounds * 2)
    store = workdir / "camera-store"
    store.mkdir(parents=True, exist_ok=True)
    rows, differences, verdicts = [], [], []
    with ForeignLoad() as load:
        for model in models:
            weights = None if model == "inspection" else save_random_resnet50(store / f"{model}-random.pth")
            mar = build_ours(store, model, f"camera_{model}", weights)
            with BenchServer(store, {model: mar}, workdir / f"camera-{model}", env={"OMP_NUM_THREADS": "1"}) as server:
                url = f"{server.url()}/predictions/{model}"
                headers = {"X-Explain-Method": "gradcam"}
                shots = {
                    "0.3 MP": Shot(url, images.small, headers),
                    "12 MP": Shot(url, images.camera, headers),
                }
                windows = alternate(shots, settings, rounds)
            paired = [s.rps / c.rps for s, c in zip(windows["0.3 MP"], windows["12 MP"], strict=True) if c.rps]
            cost = float(np.median(paired)) if paired else float("inf")
            verdicts.append((model, cost))
            for name, measured in windows.items():
                done = sum(w.completed for w in measured)
                rps = done / max(sum(w.elapsed_s for w in measured), 1e-9)
                errors = sum(w.errors for w in measured)
                rows.append([model, name, f"{rps:.2f}", str(done), str(errors)])
            rows.append([model, "cost of 12 MP / 0.3 MP (median of paired windows)", f"{cost:.2f}x", "", ""])
            net = inspection_model() if model == "inspection" else random_resnet50()
            preprocessor = Preprocessor(INPUT_SPEC if model == "inspection" else TORCHVISION_SPEC)
            side = INPUT_SIZE if model == "inspection" else 224
            differences.append([model, *(f"{v:.3f}" for v in map_difference(images.camera, net, preprocessor, side))])
    summary = load.summary()
    section.add(
        f"The same scratched surface (synthetic inspection data, enlarged bicubically, grain σ = {GRAIN:g} "
        f"levels) as JPEG quality 90: {CAMERA[0]}x{CAMERA[1]} ({len(images.camera) / 2**20:.1f} MB) and "
        f"{SMALL[0]}x{SMALL[1]} ({len(images.small) / 2**10:.0f} KB). One server per model (batchSize 8, one "
        f"worker, OMP_NUM_THREADS=1), Grad-CAM on every request, concurrency 4, {rounds} alternating windows "
        f"per size. During this section {summary.describe()}.",
        table(["model", "picture", "req/s", "requests", "errors"], rows),
        "Reduced (draft) vs full decoding of the 12 MP picture: Grad-CAM map difference after "
        "max-normalisation, and mean absolute difference of the jet overlays (levels of 255):",
        table(["model", "max map difference", "overlay mean difference"], differences),
    )
    for model, cost in verdicts:
        section.targets.append(
            Target(
                f"end to end {model}: a 12 MP JPEG vs a 0.3 MP one (Grad-CAM)",
                f"≤ {GOAL:.1f}x",
                f"{cost:.2f}x",
                cost <= GOAL,
                summary.disturbed,
            )
        )
    return section
