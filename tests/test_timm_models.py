"""timm models through the archive CLI's ``timm`` kind and the worker, and timm as an optional package.

One DeiT-tiny MAR (seeded random weights, ImageNet's 1000 classes) is built by the CLI and
loaded by the handler on TorchServe's real Context, as a worker would.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import handlers.archive as archive
from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import load_context, run_batch, unpack_mar
from handlers.testing.images import image_bytes
from handlers.testing.mars import custom_context

timm = pytest.importorskip("timm")

MODEL = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def deit_dir(tmp_path_factory) -> Path:
    """The unpacked MAR of ``python -m handlers.archive timm --model deit_tiny_patch16_224 ...``."""
    work = tmp_path_factory.mktemp("deit")
    torch.manual_seed(0)
    torch.save(timm.create_model(MODEL, pretrained=False).state_dict(), work / "deit.pth")
    archive.main(["timm", "--model", MODEL, "--weights", str(work / "deit.pth"), "--export-path", str(work)])
    return unpack_mar(work / f"{MODEL}.mar", work / "model")


def test_the_mar_carries_timm_s_own_transform_and_imagenet_labels(deit_dir):
    config = yaml.safe_load((deit_dir / "model-config.yaml").read_text())["gradcam"]
    assert config["model"] == {"builder": "timm", "name": MODEL, "num_classes": 1000}
    # timm's data config for DeiT: 224 px, bicubic, crop_pct 0.9 -> resize int(224 / 0.9) = 248.
    assert config["input"] == {
        "resize": 248,
        "crop": 224,
        "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }


def test_the_worker_answers_a_batch_with_predictions_and_14x14_maps(deit_dir):
    handler = GradCamHandler()
    handler.initialize(load_context(deit_dir, MODEL))
    assert handler.explainer.layer_name == "blocks.11.norm1"
    rows: list[dict[str, object]] = [{"body": bytearray(image_bytes(seed, size=(260, 240)))} for seed in range(3)]
    rows.append({"body": {"data": image_bytes(9), "target": "goldfish"}})
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200] * 4
    for body in bodies:
        assert len(body["predictions"]) == 3
        (gradcam,) = body["explanations"]
        assert gradcam["method"] == "gradcam" and gradcam["layer"] == "blocks.11.norm1"
        heatmap = np.array(gradcam["heatmap"])
        assert gradcam["shape"] == [14, 14] == list(heatmap.shape)
        assert heatmap.min() >= 0 and heatmap.max() == 1.0
    assert bodies[0]["explanations"][0]["target"] == {k: bodies[0]["predictions"][0][k] for k in ("index", "label")}
    assert bodies[3]["explanations"][0]["target"] == {"index": 1, "label": "goldfish"}


def test_an_unknown_timm_model_is_refused_with_close_names(tmp_path, capsys):
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(SystemExit) as stopped:
        archive.main(["timm", "--model", "deit_tiny_patch16", "--weights", str(tmp_path / "w.pth")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("python -m handlers.archive: error: argument --model: unknown timm model 'deit_tiny_patch16'")
    assert "did you mean deit_tiny_patch16_224" in err


class _HideTimm:
    """A meta path finder under which ``timm`` cannot be imported, as in a server without it."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "timm" or name.startswith("timm."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_the_timm_kind_without_timm_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [_HideTimm(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "timm")
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(SystemExit) as stopped:
        archive.main(["timm", "--model", MODEL, "--weights", str(tmp_path / "w.pth")])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert f"install it with: {sys.executable} -m pip install timm" in err


def test_a_server_without_timm_names_it_for_timm_mars_only(deit_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [_HideTimm(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "timm")  # imported by this test module; a fresh worker has not
    handler = GradCamHandler()
    handler.initialize(load_context(deit_dir, MODEL))  # loads (no crash loop) and answers 503
    statuses, bodies, _ = run_batch(handler, [{"body": bytearray(image_bytes(1))}] * 2)
    assert statuses == [503, 503]
    message = bodies[0]["error"]
    assert "lacks timm; install with: " in message and message.endswith("-m pip install timm")
    other = GradCamHandler()
    other.initialize(custom_context(tmp_path))  # a MAR that is no timm model does not need it
    statuses, _, _ = run_batch(other, [{"body": bytearray(image_bytes(1))}])
    assert statuses == [200]


def test_a_one_channel_timm_model_gets_one_mean_and_std_and_answers(tmp_path):
    """``in_chans=1``: timm's RGB mean and std averaged to one value each, and the worker feeds luminance."""
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t", in_chans=1, num_classes=3).state_dict(), tmp_path / "gray.pth")
    (tmp_path / "labels.txt").write_text("ok\nscratch\ndent")
    weights, labels = str(tmp_path / "gray.pth"), str(tmp_path / "labels.txt")
    flags = ["--model-kwargs", '{"in_chans": 1}', "--name", "gray", "--export-path", str(tmp_path)]
    archive.main(["timm", "--model", "resnet10t", "--weights", weights, "--labels", labels, *flags])
    model_dir = unpack_mar(tmp_path / "gray.mar", tmp_path / "model")
    spec = yaml.safe_load((model_dir / "model-config.yaml").read_text())["gradcam"]["input"]
    assert spec["mean"] == [pytest.approx((0.485 + 0.456 + 0.406) / 3)]
    assert spec["std"] == [pytest.approx((0.229 + 0.224 + 0.225) / 3)]
    handler = GradCamHandler()
    handler.initialize(load_context(model_dir, "gray"))
    rows = [
        {"data": bytearray(image_bytes(i)), "method": method}
        for i, method in enumerate((b"gradcam", b"guided_gradcam"))
    ]
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200, 200] and [body["explanations"][0]["method"] for body in bodies] == [
        "gradcam",
        "guided_gradcam",
    ]
