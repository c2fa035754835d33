"""The command-line client against a real TorchServe: output files, summary, exit status, sheets, tokens,
every method of the registry, the model description and the checks made against it."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handlers.client.cli import main
from handlers.client.report import Progress
from handlers.client.sheet import FOOTER, MARGIN, PANEL, TITLE, TOP_BAR
from handlers.engine.methods import METHODS
from handlers.inspection import CLASSES, INPUT_SIZE, synthetic
from handlers.testing.torchserve import TorchServe, free_port

pytestmark = pytest.mark.integration

KINDS = ("ok", "scratch", "dent", "scratch+dent")
BROKEN = "not_an_image.png"
STEMS = [kind.replace("+", "_") for kind in KINDS] + ["dent_2"]


def run_cli(*argv: str) -> tuple[int, str]:
    """``main(argv)`` in this process: (exit status, what it printed)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(list(argv))
    return status, printed.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder: one PNG per kind, a JPEG in a subfolder, a text file named .png, and a .txt to ignore."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(20261124)
    for kind in KINDS:
        Image.fromarray(synthetic.render(kind, rng).image).save(folder / f"{kind.replace('+', '_')}.png")
    (folder / "more").mkdir()
    Image.fromarray(synthetic.render("dent", rng).image).save(folder / "more" / "dent_2.jpg", quality=95)
    (folder / BROKEN).write_text("this is text, not a picture")
    (folder / "notes.txt").write_text("not an image suffix: skipped")
    return folder


@pytest.fixture(scope="module")
def sheet_run(server, images, tmp_path_factory) -> tuple[int, str, Path]:
    """One CLI run over the whole folder with --sheet: (exit status, printed summary, output folder)."""
    out = tmp_path_factory.mktemp("explanations")
    status, printed = run_cli("--url", server.url(), "--out", str(out), "--sheet", str(images))
    return status, printed, out


def test_each_image_gets_an_overlay_and_its_json(sheet_run):
    status, _, out = sheet_run
    assert status == 1, "one file is not an image: the run must report a failure"
    for stem in STEMS:
        answer = json.loads((out / f"{stem}.json").read_text())
        assert {p["label"] for p in answer["predictions"]} == set(CLASSES)
        (explanation,) = answer["explanations"]
        assert explanation["method"] == "gradcam" and explanation["format"] == "overlay"
        assert explanation["target"] == {k: answer["predictions"][0][k] for k in ("index", "label")}
        name = f"{stem}.gradcam.{explanation['target']['label']}.png"
        assert explanation["file"] == name and "png" not in explanation
        with Image.open(out / name) as overlay:
            assert overlay.format == "PNG" and overlay.size == (INPUT_SIZE, INPUT_SIZE)
            assert np.asarray(overlay.convert("RGB")).std() > 5
    assert not list(out.glob("not_an_image*")) and not list(out.glob("notes*"))


def test_summary_lists_every_image_and_the_failure(sheet_run):
    _, printed, _ = sheet_run
    lines = printed.splitlines()
    assert lines[0].split() == ["FILE", "TOP", "LABEL", "PROB", "EXPLAINED", "STATUS"]
    rows = {Path(line.split()[0]).name: line.split() for line in lines[1:-1]}
    assert set(rows) == {f"{kind.replace('+', '_')}.png" for kind in KINDS} | {"dent_2.jpg", BROKEN}
    for kind in ("ok", "scratch", "dent"):
        _, top, probability, explained, status = rows[f"{kind}.png"]
        assert top == explained == kind and float(probability) > 0.5 and status == "ok"
    assert "FAILED: HTTP 415: body is not an image" in " ".join(rows[BROKEN])
    assert lines[-1].startswith("6 image(s): 5 ok, 1 failed")


def panels(sheet: Image.Image, row: int = 0) -> list[np.ndarray]:
    """The four PANEL x PANEL picture areas of one row of a sheet, left to right, as float RGB arrays."""
    top = MARGIN + row * (TITLE + PANEL + MARGIN) + TITLE
    picture = np.asarray(sheet.convert("RGB"), dtype=np.float32)
    return [
        picture[top : top + PANEL, left : left + PANEL]
        for left in (MARGIN + column * (PANEL + MARGIN) for column in range(4))
    ]


def test_sheet_has_four_non_blank_panels(sheet_run, images):
    _, _, out = sheet_run
    for stem in STEMS:
        with Image.open(out / f"{stem}.sheet.png") as sheet:
            assert sheet.size == (4 * PANEL + 5 * MARGIN, MARGIN + TITLE + PANEL + FOOTER + MARGIN)
            assert 3.0 < sheet.width / sheet.height < 3.6, "four square panels side by side"
            source, bars, gradcam, guided = panels(sheet)
        for name, panel in (("input", source), ("bars", bars), ("Grad-CAM", gradcam), ("guided", guided)):
            assert panel.std() > 5, f"{name} panel of {stem}.sheet.png is blank"
        original = next(images.rglob(f"{stem}.*"))
        with Image.open(original) as picture:
            expected = np.asarray(
                picture.convert("RGB").resize((PANEL, PANEL), Image.Resampling.BILINEAR), dtype=np.float32
            )
        assert np.abs(source - expected).mean() < 8, "the input panel is not the input image"
        assert (bars == TOP_BAR).all(axis=2).sum() > 100, "no highlighted bar for the top prediction"
        assert (np.abs(gradcam[..., 0] - gradcam[..., 2]) > 60).mean() > 0.2, "the Grad-CAM panel has no jet colours"
        assert (guided[..., 0] == guided[..., 1]).all() and (guided[..., 1] == guided[..., 2]).all(), (
            "guided map is grayscale"
        )
        assert 0.001 < (guided[..., 0] > 25).mean() < 0.9, "the guided map is empty or saturated"


def test_explicit_targets_and_method(server, images, tmp_path):
    """Two targets, Guided Grad-CAM overlays: one file each, named alike; the sheet shows both targets, a row each."""
    image = images / "scratch_dent.png"
    status, printed = run_cli(
        "--url",
        server.url(),
        "--out",
        str(tmp_path),
        "--method",
        "guided_gradcam",
        "--sheet",
        "--target",
        "scratch",
        "--target",
        "2",
        "--top-k",
        "2",
        str(image),
    )
    assert status == 0, printed
    answer = json.loads((tmp_path / "scratch_dent.json").read_text())
    assert len(answer["predictions"]) == 2
    assert [(e["method"], e["target"]["label"], e["file"]) for e in answer["explanations"]] == [
        ("guided_gradcam", "scratch", "scratch_dent.guided_gradcam.scratch.png"),
        ("guided_gradcam", "dent", "scratch_dent.guided_gradcam.dent.png"),
    ]
    assert "scratch, dent" in printed
    for label in ("scratch", "dent"):
        with Image.open(tmp_path / f"scratch_dent.guided_gradcam.{label}.png") as overlay:
            assert overlay.size == (INPUT_SIZE, INPUT_SIZE)
    with Image.open(tmp_path / "scratch_dent.sheet.png") as sheet:
        assert sheet.size == (4 * PANEL + 5 * MARGIN, MARGIN + 2 * (TITLE + PANEL + MARGIN) + FOOTER)
        first, second = panels(sheet), panels(sheet, row=1)
    assert all(panel.std() > 5 for panel in first)
    assert second[0].std() == second[1].std() == 0, "input and bars are drawn once, in the first row"
    assert second[2].std() > 5 and second[3].std() > 5, "the second target's maps are missing"
    assert np.abs(second[2] - first[2]).mean() > 1, "both rows show the same Grad-CAM map"


def test_bad_option_is_reported_per_image(server, images, tmp_path):
    status, printed = run_cli("--url", server.url(), "--out", str(tmp_path), "--target", "rust", str(images / "ok.png"))
    assert status == 1 and "FAILED: HTTP 400: option 'target': 'rust' is not a class label" in printed


def test_unreachable_server_fails_every_image_clearly(images, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    status, printed = run_cli("--url", url, "--out", str(tmp_path), str(images / "ok.png"), str(images / "dent.png"))
    assert status == 1 and printed.count("FAILED: cannot connect to") == 2


def test_usage_errors_exit_2(tmp_path, capsys):
    for argv in (
        [str(tmp_path / "missing.png")],
        [str(tmp_path)],
        ["--key-file", str(tmp_path / "none.json"), str(tmp_path)],
    ):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
    errors = capsys.readouterr().err
    assert "no such file or folder" in errors and "no image files found" in errors and "cannot read key file" in errors


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_updates_in_place():
    terminal = FakeTerminal()
    progress = Progress(4, terminal, enabled=True)
    for ok in (True, False, True, True):
        progress.advance(ok)
    progress.close()
    frames = terminal.getvalue().split("\r")[1:]
    assert len(frames) == 4 and frames[-1].startswith("[" + "#" * 30 + "] 4/4 images, 1 failed")
    quiet = io.StringIO()
    Progress(4, quiet, enabled=False).advance(True)
    assert quiet.getvalue() == ""


@pytest.fixture(scope="module")
def token_server(model_store, tmp_path_factory):
    """A TorchServe with token authorization on; it writes key_file.json into its working directory."""
    server = TorchServe(
        model_store,
        {"inspection": "inspection.mar"},
        tmp_path_factory.mktemp("token"),
        config={"disable_token_authorization": "false"},
    ).start(wait_ready=False)
    try:
        key_file = server.workdir / "key_file.json"
        deadline = time.monotonic() + 60
        while True:
            try:
                management = json.loads(key_file.read_text())["management"]["key"]
                break
            except (OSError, ValueError, KeyError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        server.wait_ready(180, headers={"Authorization": f"Bearer {management}"})
        yield server
    finally:
        server.stop()


def test_key_file_authorizes_and_no_token_fails_clearly(token_server, images, tmp_path):
    image = str(images / "scratch.png")
    key_file = token_server.workdir / "key_file.json"
    status, printed = run_cli(
        "--url", token_server.url(), "--out", str(tmp_path / "keyed"), "--key-file", str(key_file), image
    )
    assert status == 0, printed
    assert json.loads((tmp_path / "keyed" / "scratch.json").read_text())["predictions"][0]["label"] == "scratch"
    inference_key = json.loads(key_file.read_text())["inference"]["key"]
    assert (
        run_cli("--url", token_server.url(), "--out", str(tmp_path / "token"), "--token", inference_key, image)[0] == 0
    )
    for extra in ([], ["--token", "wrong-key"]):
        status, printed = run_cli("--url", token_server.url(), "--out", str(tmp_path / "refused"), *extra, image)
        assert status == 1
        assert "FAILED: HTTP 400: Token Authorization failed" in printed and "give --token KEY or --key-file" in printed


def served(server: TorchServe) -> list[str]:
    """The --url/--management-url arguments that point the CLI at ``server``."""
    return ["--url", server.url(), "--management-url", server.url("management")]


def test_describe_prints_methods_labels_and_layers(server):
    status, printed = run_cli(*served(server), "--describe")
    assert status == 0, printed
    lines = printed.splitlines()
    assert lines[0].startswith("model inspection: input 128x128, target layer features")
    table = {line.split()[0]: line.split() for line in lines[2 : 2 + len(METHODS)]}
    assert list(table) == list(METHODS), "one row per registry method, in registry order"
    for name, method in METHODS.items():
        assert table[name][1:3] == ["yes" if method.class_specific else "no", method.resolution], name
    assert "labels (3): 0 ok, 1 scratch, 2 dent" in lines
    layers = next(line for line in lines if line.startswith("layers for --layer"))
    assert "features, features.17" in layers
    assert any(line.startswith("limits: ") and "max_ig_steps=64" in line for line in lines)


def test_describe_without_management_api_fails_clearly(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--url", url, "--management-url", url, "--describe"]) == 1
    assert "cannot describe model 'inspection': cannot connect to the management API" in capsys.readouterr().err


# Per method: extra flags, then what each explanation must be (resolution, the picture's file name).
SAMPLE = "scratch"
CASES: dict[str, tuple[list[str], list[str]]] = {
    "gradcam": ([], [f"{SAMPLE}.gradcam.scratch.png"]),
    "guided_gradcam": ([], [f"{SAMPLE}.guided_gradcam.scratch.png"]),
    "cam": ([], [f"{SAMPLE}.cam.scratch.png"]),
    "hirescam": ([], [f"{SAMPLE}.hirescam.scratch.png"]),
    "gradcam_plusplus": ([], [f"{SAMPLE}.gradcam_plusplus.scratch.png"]),
    "xgradcam": ([], [f"{SAMPLE}.xgradcam.scratch.png"]),
    "layercam": ([], [f"{SAMPLE}.layercam.scratch.png"]),
    "eigencam": ([], [f"{SAMPLE}.eigencam.png"]),
    "guided_backprop": ([], [f"{SAMPLE}.guided_backprop.scratch.png"]),
    "activations": (["--channel", "5", "--layer", "features.14"], [f"{SAMPLE}.activations.features.14.ch5.png"]),
    "occlusion": (["--window", "32", "--stride", "16"], [f"{SAMPLE}.occlusion.scratch.png"]),
    "integrated_gradients": (["--steps", "4"], [f"{SAMPLE}.integrated_gradients.scratch.png"]),
    "none": ([], []),
}


def test_cases_cover_the_registry():
    assert set(CASES) == set(METHODS)


@pytest.mark.parametrize("method", list(CASES))
def test_every_method_writes_its_overlays(server, images, tmp_path, method):
    extra, files = CASES[method]
    status, printed = run_cli(
        *served(server), "--out", str(tmp_path), "--method", method, *extra, str(images / f"{SAMPLE}.png")
    )
    assert status == 0, printed
    answer = json.loads((tmp_path / f"{SAMPLE}.json").read_text())
    assert [e["file"] for e in answer["explanations"]] == files
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(files)
    for entry in answer["explanations"]:
        assert entry["method"] == method and entry["format"] == "overlay" and "png" not in entry
        assert entry["class_specific"] == METHODS[method].class_specific
        assert entry["resolution"] == METHODS[method].resolution
        assert (entry["target"] is None) == (not METHODS[method].class_specific)
        assert (entry["layer"] is None) == (not METHODS[method].uses_layer)
        with Image.open(tmp_path / entry["file"]) as overlay:
            assert overlay.size == (INPUT_SIZE, INPUT_SIZE)
            assert np.asarray(overlay.convert("RGB"), dtype=np.float32).std() > 5
    if method == "activations":
        assert answer["explanations"][0]["channel"] == 5 and answer["explanations"][0]["layer"] == "features.14"
        assert "channel 5" in printed
    elif method == "eigencam":
        assert " image " in printed
    elif method == "none":
        assert answer["explanations"] == []


def test_activations_tiles_are_one_mosaic(server, images, tmp_path):
    status, printed = run_cli(
        *served(server), "--out", str(tmp_path), "--method", "activations", "--format", "tiles", "--channels", "6",
        str(images / "dent.png"),
    )  # fmt: skip
    assert status == 0, printed
    (entry,) = json.loads((tmp_path / "dent.json").read_text())["explanations"]
    assert entry["file"] == "dent.activations.features.tiles.png" and entry["target"] is None
    assert len(entry["channels"]) == 6 and entry["grid"] == [2, 3]
    assert [p.name for p in tmp_path.glob("*.png")] == [entry["file"]]
    rows, columns = entry["grid"]
    height, width = entry["tile_shape"]
    with Image.open(tmp_path / entry["file"]) as mosaic:
        assert mosaic.size == (columns * (width + 1) - 1, rows * (height + 1) - 1) and mosaic.mode == "L"
    assert "6 channels" in printed


def test_sheet_with_a_class_agnostic_method(server, images, tmp_path):
    """EigenCAM has no target: the sheet explains the top prediction with Grad-CAM and Guided Grad-CAM."""
    status, printed = run_cli(
        *served(server), "--out", str(tmp_path), "--method", "eigencam", "--sheet", str(images / "dent.png")
    )
    assert status == 0, printed
    assert (tmp_path / "dent.eigencam.png").exists()
    with Image.open(tmp_path / "dent.sheet.png") as sheet:
        assert all(panel.std() > 5 for panel in panels(sheet))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "lime"], "--method 'lime' is not offered by this model; choose one of none, gradcam,"),
        (["--method", "eigencam", "--target", "dent"], "'eigencam' is not class-specific"),
        (["--method", "gradcam", "--window", "8"], "--window applies to --method occlusion, not to 'gradcam'"),
        (["--method", "occlusion", "--steps", "8"], "--steps applies to --method integrated_gradients"),
        (["--method", "none", "--target", "dent"], "--target needs a class-specific method"),
    ],
)
def test_method_and_options_are_checked_against_the_description(server, images, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        main([*served(server), "--out", str(tmp_path), *argv, str(images / "ok.png")])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing is sent or written"


def test_registry_is_the_fallback_without_management_api(server, images, tmp_path, capsys):
    """No management API: the engine's registry still knows every method and its options."""
    closed = f"http://127.0.0.1:{free_port()}"
    argv = ["--url", server.url(), "--management-url", closed, "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--method", "lime", str(images / "ok.png")])
    assert stopped.value.code == 2 and "not offered by the engine's registry" in capsys.readouterr().err
    status, printed = run_cli(*argv, "--method", "integrated_gradients", "--steps", "4", str(images / "ok.png"))
    assert status == 0, printed
    assert (tmp_path / "ok.integrated_gradients.ok.png").exists()
