"""``--on original`` against a real TorchServe: maps drawn over EXIF-turned, non-square photos at their own size.

Two ways a model sees a photo: the default ``inspection`` MAR resizes the whole photo to
128 x 128 (the box is the whole photo, stretched), and ``inspection_crop``, the same network
and weights packed as ImageNet models are served (shorter side to 150, centre crop 128), sees
only the middle of a 400 x 300 photo: the box (72, 22, 328, 278). Each photo is a held-out
generated surface enlarged into the part the model sees, stored turned under an EXIF
orientation tag (all eight occur); its defect mask is known in the upright photo's pixels, so
the peak of the defect class's map, placed with the answer's geometry, can be checked against it.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from handlers.client.cli import main
from handlers.client.original import peak_on_original
from handlers.engine.methods import METHODS
from handlers.inspection import CLASSES, MEAN, STD, WEIGHTS_FILE, network, scenes, synthetic
from handlers.render.original import UNSEEN_KEEP
from handlers.testing.torchserve import TorchServe

pytestmark = pytest.mark.integration

CROP_RESIZE = 150  # shorter side before the 128 px centre crop
# Worked out by hand: 400 x 300 -> 200 x 150, crop 128 at (36, 11), 2 photo pixels per model pixel.
LANDSCAPE_BOX = (72, 22, 328, 278)
PORTRAIT_BOX = (22, 72, 278, 328)  # 300 x 400 -> 150 x 200, crop at (11, 36)
EXACT_SIZES = ((320, 192), (160, 280), (300, 180), (150, 330))  # the default MAR stretches each to 128 x 128
CROPPED = (((400, 300), LANDSCAPE_BOX), ((300, 400), PORTRAIT_BOX))
PHOTO_COUNT = 16  # per model: both defects, every EXIF orientation, JPEG and PNG
POINTING_TARGET = 0.9  # share of photos whose map peaks within one cell of the defect


@dataclass(frozen=True)
class Shot:
    """How one photo is taken: the model that explains it, its upright size, where the sample goes, how it's stored."""

    name: str
    model: str
    kind: str
    size: tuple[int, int]
    box: tuple[int, int, int, int] | None
    orientation: int
    fmt: str


def shots() -> list[Shot]:
    made = []
    for i in range(PHOTO_COUNT):
        kind, orientation, fmt = ("scratch", "dent")[i % 2], 1 + i % 8, ("JPEG", "PNG")[i // 8]
        made.append(Shot(f"exact_{i}", "inspection", kind, EXACT_SIZES[i % 4], None, orientation, fmt))
        size, box = CROPPED[(i // 2) % 2]
        made.append(Shot(f"crop_{i}", "inspection_crop", kind, size, box, orientation, fmt))
    return made


SHOTS = shots()
GRID = (16, 16)  # the inspection network's Grad-CAM cells


def run_cli(*argv: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(list(argv))


@pytest.fixture(scope="module")
def crop_server(model_store, tmp_path_factory):
    """The default MAR and the same network behind a shorter-side resize and centre crop."""
    work = tmp_path_factory.mktemp("crop")
    store = work / "store"
    store.mkdir()
    shutil.copy(model_store / "inspection.mar", store)
    labels = work / "labels.txt"
    labels.write_text("\n".join(CLASSES))
    from handlers.archive import main as archive_main

    model = ["--model-file", network.__file__, "--model-class", "InspectionNet", "--weights", str(WEIGHTS_FILE)]
    transform = [
        "--input-size",
        "128",
        "--resize",
        str(CROP_RESIZE),
        "--mean",
        *map(str, MEAN),
        "--std",
        *map(str, STD),
    ]
    archive_main(
        [
            "custom",
            "--name",
            "inspection_crop",
            *model,
            *transform,
            "--labels",
            str(labels),
            "--export-path",
            str(store),
        ]
    )
    with TorchServe(store, {"inspection": "inspection.mar", "inspection_crop": "inspection_crop.mar"}, work) as server:
        yield server


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, tuple[scenes.Photo, Path]]:
    """Each shot taken from a held-out generated sample and written to a file, with its ground truth."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(20261126)
    made = {}
    for shot in SHOTS:
        sample, background = synthetic.render(shot.kind, rng), synthetic.render("ok", rng)
        taken = scenes.photo(sample, shot.size, shot.box, background, shot.orientation, shot.fmt)
        path = folder / f"{shot.name}.{shot.fmt.lower()}"
        path.write_bytes(taken.data)
        made[shot.name] = (taken, path)
    return made


@pytest.fixture(scope="module")
def answers(crop_server, photos, tmp_path_factory) -> tuple[dict[str, dict], Path]:
    """CLI runs with --on original, one per model and defect (explained as --target): each photo's answer."""
    out = tmp_path_factory.mktemp("on_original")
    server = ["--url", crop_server.url(), "--management-url", crop_server.url("management")]
    for model in ("inspection", "inspection_crop"):
        for kind in ("scratch", "dent"):
            paths = [str(photos[s.name][1]) for s in SHOTS if s.model == model and s.kind == kind]
            assert (
                run_cli(*server, "--model", model, "--on", "original", "--target", kind, "--out", str(out), *paths) == 0
            )
    return {shot.name: json.loads((out / f"{shot.name}.json").read_text()) for shot in SHOTS}, out


def test_geometry_is_the_upright_photo_and_the_part_the_model_saw(answers):
    replies, _ = answers
    for shot in SHOTS:
        assert replies[shot.name]["geometry"] == {
            "original_size": list(shot.size),
            "box": list(shot.box or (0, 0, *shot.size)),
        }, shot


def test_the_maps_peak_lands_on_the_defect_in_the_original(answers, photos):
    """The defect class's map, placed with the geometry, peaks within one cell of the defect's pixels."""
    replies, _ = answers
    missed = []
    for shot in SHOTS:
        reply = replies[shot.name]
        (entry,) = reply["explanations"]
        assert entry["target"]["label"] == shot.kind
        point = peak_on_original(reply, entry)
        if not scenes.within_a_cell(photos[shot.name][0].mask, reply["geometry"]["box"], GRID, point):
            missed.append((shot.name, point))
    assert len(missed) <= (1 - POINTING_TARGET) * len(SHOTS), missed


def upright(data: bytes) -> np.ndarray:
    """The photo as a viewer shows it (EXIF orientation applied), RGB."""
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"), dtype=np.float64)


def test_the_overlay_is_the_photo_at_its_own_size(answers, photos):
    """The picture is upright at the photo's size; outside the box the photo stays visible, darkened."""
    replies, out = answers
    for shot in SHOTS:
        drawn = np.asarray(Image.open(out / replies[shot.name]["explanations"][0]["file"]), dtype=np.float64)
        assert (drawn.shape[1], drawn.shape[0]) == shot.size, shot
        if shot.box is None:
            continue
        photo = upright(photos[shot.name][0].data)
        x0, y0 = shot.box[:2]
        unseen = (slice(None), slice(0, x0 - 2)) if x0 > y0 else (slice(0, y0 - 2), slice(None))
        ratio = np.median(drawn[unseen] / np.maximum(photo[unseen], 1.0))
        assert ratio == pytest.approx(UNSEEN_KEEP, abs=0.03), shot


def test_every_method_that_returns_a_map_draws_on_the_original(crop_server, photos, tmp_path):
    """Layer-resolution, input-resolution, class-agnostic and channel maps: each one a PNG of the photo's size."""
    _, path = photos["crop_0"]
    options = {"activations": ["--channels", "2"], "occlusion": ["--window", "32", "--stride", "32"]}
    options["integrated_gradients"] = ["--steps", "4"]
    server = ["--url", crop_server.url(), "--management-url", crop_server.url("management")]
    for method in (name for name in METHODS if name != "none"):
        out = tmp_path / method
        argv = [*server, "--model", "inspection_crop", "--on", "original", "--method", method, "--out", str(out)]
        assert run_cli(*argv, *options.get(method, []), str(path)) == 0, method
        answer = json.loads((out / "crop_0.json").read_text())
        files = [entry["file"] for entry in answer["explanations"]]
        assert len(files) == (2 if method == "activations" else 1), method
        for name in files:
            assert Image.open(out / name).size == SHOTS[1].size, (method, name)
