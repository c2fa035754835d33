"""The MAR CLI refuses every argument the worker would trip over: one line naming the flag, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

import handlers.archive as archive
from handlers.serving.config import LIMIT_DEFAULTS
from handlers.testing.mars import LABELS, SIDE, TINY_NET

ROOT = Path(__file__).resolve().parents[1]
TWO_MODULES = TINY_NET + "\n\nclass Head(nn.Module):\n    pass\n"


@pytest.fixture
def tiny(tmp_path) -> list[str]:
    """Arguments of a valid ``custom`` build of TinyNet (3 classes, 32 x 32) into ``tmp_path/out``."""
    (tmp_path / "tiny_net.py").write_text(TINY_NET)
    namespace: dict = {}
    exec(TINY_NET, namespace)  # noqa: S102 - the source the MAR ships
    torch.save(namespace["TinyNet"](len(LABELS)).state_dict(), tmp_path / "tiny.pth")
    torch.save(namespace["TinyNet"](len(LABELS) + 1).state_dict(), tmp_path / "four.pth")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (tmp_path / "two.py").write_text(TWO_MODULES)
    (tmp_path / "broken.py").write_text("import torch\nfrom torch import nn\nraise RuntimeError('no GPU here')\n")
    return [
        "custom",
        "--name",
        "tiny",
        "--model-file",
        str(tmp_path / "tiny_net.py"),
        "--weights",
        str(tmp_path / "tiny.pth"),
        "--labels",
        str(tmp_path / "labels.txt"),
        "--input-size",
        str(SIDE),
        "--export-path",
        str(tmp_path / "out"),
    ]


def refusal(argv: list[str], capsys, status: int = 2) -> str:
    """The one stderr line of a refused ``main(argv)``; asserts the exit status and no traceback."""
    with pytest.raises(SystemExit) as stopped:
        archive.main(argv)
    assert stopped.value.code == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("python -m handlers.archive")
    return lines[0]


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if a refused argument still reached the (slow) build."""

    def built(*_args):
        raise AssertionError("the build started before every argument was validated")

    monkeypatch.setattr(archive, "build_mar", built)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--batch-size", "0"], "argument --batch-size: must be from 1 to 256, got 0"),
        (["--batch-size", "1000000"], "argument --batch-size: must be from 1 to 256, got 1000000"),
        (["--max-batch-delay", "-1"], "argument --max-batch-delay: must be from 0 to 60000, got -1"),
        (["--response-timeout", "-5"], "argument --response-timeout: must be from 1 to 3600, got -5"),
        (["--workers", "-2"], "argument --workers: must be from 1 to 128, got -2"),
        (["--workers", "0"], "argument --workers: must be from 1 to 128, got 0"),
        (["--torch-threads", "0"], "argument --torch-threads: must be from 1 to 256, got 0"),
        (["--max-image-pixels", "0"], "argument --max-image-pixels: must be a whole number >= 1, got 0"),
        (["--max-targets", "0"], "argument --max-targets: must be a whole number >= 1, got 0"),
        (["--max-top-k", "-3"], "argument --max-top-k: must be a whole number >= 1, got -3"),
        (["--max-response-bytes", "0"], "argument --max-response-bytes: must be a whole number >= 1, got 0"),
        (["--max-jpeg-scans", "0"], "argument --max-jpeg-scans: must be a whole number >= 1, got 0"),
        (["--decode-timeout", "0"], "argument --decode-timeout: must be a number of seconds > 0, got 0.0"),
        (["--decode-timeout", "nan"], "argument --decode-timeout: must be a number of seconds > 0, got nan"),
        (["--max-targets", "ten"], "argument --max-targets: invalid int value: 'ten'"),
        (["--top-k", "0"], "argument --top-k: must be from 1 to"),
        (["--top-k", "7", "--max-top-k", "5"], "argument --top-k: must be"),
        (["--top-k-explanations", "4"], "argument --top-k-explanations: must be from 1 to 3, got 4"),
        (["--top-k-explanations", "3", "--max-targets", "2"], "argument --top-k-explanations: must be from 1 to 2"),
        (["--method", "lime"], "argument --method: invalid choice: 'lime'"),
        (["--name", "../../x"], "argument --name: '../../x' is not a plain model name"),
        (["--name", "a/b"], "argument --name: 'a/b' is not a plain model name"),
        (["--name", ".hidden"], "argument --name: '.hidden' is not a plain model name"),
        (["--model-kwargs", "[3]"], "argument --model-kwargs: must be a JSON object"),
        (["--model-kwargs", "{num_classes: 3}"], "argument --model-kwargs: not valid JSON"),
        (["--weights", "/nonexistent/w.pth"], "argument --weights: no such file: /nonexistent/w.pth"),
        (["--labels", "/nonexistent/l.txt"], "argument --labels: no such file: /nonexistent/l.txt"),
        (["--input-size", "0"], "argument --input-size: must be from 1 to 8192, got 0"),
        (["--std", "0.2", "0", "0.2"], "argument --std: must be a number > 0, got 0"),
    ],
)
def test_bad_arguments_are_refused_before_the_build(tiny, capsys, no_build, extra, expected):
    assert expected in refusal([*tiny, *extra], capsys)


def test_a_missing_model_file_and_a_missing_required_flag(tiny, capsys, no_build, tmp_path):
    where = tiny.index("--model-file") + 1
    missing = [*tiny[:where], str(tmp_path / "absent.py"), *tiny[where + 1 :]]
    assert f"argument --model-file: no such file: {tmp_path / 'absent.py'}" in refusal(missing, capsys)
    without_weights = [arg for arg in tiny if arg not in ("--weights", str(tmp_path / "tiny.pth"))]
    assert "the following arguments are required: --weights" in refusal(without_weights, capsys)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "digits.txt",
            "cat\n2\nbird\n",
            "digits.txt: label 1 '2' is a number (a target of digits means a class index)",
        ),
        ("dup.json", '["cat", "dog", "cat"]', "dup.json: duplicate labels 'cat'"),
        ("empty.txt", "cat\n\nbird\n", "empty.txt: label 1 '' is empty"),
        ("comma.txt", "cat\ndog, puppy\nbird\n", "comma.txt: label 1 'dog, puppy' contains a comma"),
        ("pad.txt", "cat\ndog \nbird\n", "pad.txt: label 1 'dog ' has leading or trailing whitespace"),
        ("num.json", '["cat", 7, "bird"]', "num.json: label 1 is 7, not a string"),
        (
            "sparse.json",
            '{"0": "cat", "2": "bird"}',
            'sparse.json: keys must be "0".."2" with none missing; missing: 1',
        ),
        ("words.json", '{"zero": "cat"}', "words.json: keys must be class indices"),
        ("bad.json", '["cat", "dog"', "bad.json is not valid JSON"),
    ],
)
def test_bad_label_files_are_refused_naming_the_label(tiny, capsys, no_build, tmp_path, name, content, expected):
    (tmp_path / name).write_text(content)
    line = refusal([*tiny, "--labels", str(tmp_path / name)], capsys)
    assert f"argument --labels: {expected}" in line


def test_a_latin1_label_file_names_the_file_and_the_encoding(tiny, capsys, no_build, tmp_path):
    (tmp_path / "latin.txt").write_bytes("café\ndog\nbird\n".encode("latin-1"))
    line = refusal([*tiny, "--labels", str(tmp_path / "latin.txt")], capsys)
    assert "argument --labels: latin.txt is not UTF-8 text (byte 0xe9 at offset 3): save it as UTF-8" in line


@pytest.mark.parametrize(
    ("extra", "status", "expected"),
    [
        (["--target-layer", "features.9"], 2, "argument --target-layer: target layer 'features.9' does not exist"),
        (["--model-file", "{dir}/two.py"], 2, "argument --model-class: the model file defines several nn.Module"),
        (["--model-file", "{dir}/two.py", "--model-class", "Tail"], 2, "no nn.Module class 'Tail'; its classes:"),
        (["--labels", "{dir}/four.txt"], 2, "argument --labels: 4 labels but the model outputs 3 classes"),
        (["--model-file", "{dir}/broken.py"], 1, "'broken.py' failed to import: RuntimeError: no GPU here"),
        (
            ["--weights", "{dir}/four.pth"],
            1,
            "weights do not fit the TinyNet architecture: shape mismatch at fc.weight",
        ),
        (["--model-kwargs", '{"classes": 3}'], 1, "TinyNet(**{'classes': 3}) failed: TypeError"),
    ],
)
def test_a_model_that_fails_its_check_is_one_line(tiny, capsys, tmp_path, extra, status, expected):
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n")
    line = refusal([*tiny, *(arg.replace("{dir}", str(tmp_path)) for arg in extra)], capsys, status)
    assert expected in line
    assert not (tmp_path / "out" / "tiny.mar").exists()


def test_several_classes_list_them(tiny, capsys, tmp_path):
    line = refusal([*tiny, "--model-file", str(tmp_path / "two.py")], capsys)
    assert "(Head, TinyNet): name one" in line


def test_limit_flags_default_to_the_config_table_and_reach_the_yaml():
    args = archive.parser().parse_args(["inspection"])
    assert {key: getattr(args, key) for key in LIMIT_DEFAULTS} == LIMIT_DEFAULTS
    args = archive.parser().parse_args(["inspection", "--max-targets", "4", "--decode-timeout", "2.5"])
    section = archive.plan_mar(args).config["gradcam"]
    assert section["max_targets"] == 4 and section["decode_timeout_s"] == 2.5
    assert section["max_image_pixels"] == LIMIT_DEFAULTS["max_image_pixels"]


def test_a_good_build_writes_the_limits_into_the_mar(tiny, capsys, tmp_path):
    archive.main([*tiny, "--max-targets", "2", "--max-jpeg-scans", "7", "--decode-timeout", "1.5"])
    assert "wrote" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "out" / "tiny.mar") as mar:
        section = yaml.safe_load(mar.read("model-config.yaml"))["gradcam"]
        labels = json.loads(mar.read("index_to_name.json"))
        packages = {
            name.split("/")[1] for name in mar.namelist() if name.startswith("handlers/") and name.count("/") > 1
        }
    assert {"serving", "engine", "render"} <= packages
    assert not packages & {"testing", "client", "viewer", "evaluation"}  # the worker needs none of them
    assert {key: section[key] for key in LIMIT_DEFAULTS} == {
        **LIMIT_DEFAULTS,
        "max_targets": 2,
        "max_jpeg_scans": 7,
        "decode_timeout_s": 1.5,
    }
    assert labels == {"0": "cat", "1": "dog", "2": "bird"}


def test_imagenet_style_label_objects_are_accepted(tmp_path):
    (tmp_path / "imagenet.json").write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}))
    args = archive.parser().parse_args(
        ["torchvision", "--arch", "resnet18", "--weights", __file__, "--labels", str(tmp_path / "imagenet.json")]
    )
    plan = archive.plan_mar(args)
    assert plan.labels == ["tench", "goldfish"] and plan.config["gradcam"]["model"]["num_classes"] == 2


def test_torchvision_model_kwargs_reach_the_mar_and_what_the_weights_decide_is_refused(capsys, no_build):
    argv = ["torchvision", "--arch", "googlenet", "--weights", __file__, "--model-kwargs", '{"transform_input": true}']
    plan = archive.plan_mar(archive.parser().parse_args(argv))
    assert plan.config["gradcam"]["model"]["kwargs"] == {"transform_input": True}
    line = refusal([*argv[:-1], '{"num_classes": 10}'], capsys)
    assert "argument --model-kwargs: 'num_classes' is not allowed: the labels give the class count" in line


def test_torchvision_default_labels_follow_the_rules():
    plan = archive.plan_mar(archive.parser().parse_args(["torchvision", "--arch", "resnet18", "--weights", __file__]))
    assert len(plan.labels) == 1000


def test_unknown_arch_suggests_close_names(capsys, no_build):
    line = refusal(["torchvision", "--arch", "resnet5", "--weights", __file__], capsys)
    assert "argument --arch: unknown torchvision classification architecture 'resnet5'; did you mean" in line


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--batch-size", "0"], "error: argument --batch-size: must be from 1 to 256, got 0"),
        (["--name", "../../x"], "error: argument --name: '../../x' is not a plain model name"),
    ],
)
def test_refusals_from_a_real_process(tiny, extra, expected):
    done = subprocess.run(
        [sys.executable, "-m", "handlers.archive", *tiny, *extra], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


CHANNELS_LAST_NET = """
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.embed = nn.Conv2d(3, 24, 4, stride=4)
        self.mix = nn.Linear(24, 24)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        tokens = self.mix(self.embed(x).permute(0, 2, 3, 1))  # N x H x W x C, as Swin stages
        return self.fc(tokens.mean((1, 2)))
"""


def test_a_channels_last_layer_builds_and_a_layer_without_a_map_is_refused(tiny, capsys, tmp_path):
    (tmp_path / "tiny_net.py").write_text(CHANNELS_LAST_NET)
    namespace: dict = {}
    exec(CHANNELS_LAST_NET, namespace)  # noqa: S102 - the source the MAR ships
    torch.save(namespace["TinyNet"](len(LABELS)).state_dict(), tmp_path / "tiny.pth")
    line = refusal([*tiny, "--target-layer", "fc"], capsys)
    assert "argument --target-layer: target layer 'fc' outputs 1 x 3, not a spatial map" in line
    assert line.endswith("candidates (last first): mix, embed")
    archive.main([*tiny, "--target-layer", "mix"])  # N x H x W x C, read as a map
    assert (tmp_path / "out" / "tiny.mar").exists()
