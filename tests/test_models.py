"""Model building, safe weight loading and labels: the failures users must understand."""

from __future__ import annotations

import json
import re

import pytest
import torch

from handlers.inspection.network import InspectionNet
from handlers.models import (
    ModelClassError,
    ModelLoadError,
    build_model,
    parse_labels,
    read_label_file,
    read_labels,
    read_state_dict,
)

CPU = torch.device("cpu")


def test_pickled_object_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(InspectionNet(), path)
    with pytest.raises(ModelLoadError, match=r"refused by torch.load\(weights_only=True\)"):
        read_state_dict(str(path), CPU)


def test_state_dict_loads_and_mismatch_is_named(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(InspectionNet().state_dict(), path)
    model = build_model({"builder": "inspection"}, str(tmp_path), read_state_dict(str(path), CPU))
    assert isinstance(model, InspectionNet)
    with pytest.raises(ModelLoadError, match="weights do not fit the ResNet architecture"):
        build_model({"builder": "torchvision", "arch": "resnet18"}, str(tmp_path), read_state_dict(str(path), CPU))


def test_non_state_dict_and_missing_file(tmp_path):
    torch.save({"epoch": 3}, tmp_path / "ckpt.pth")
    with pytest.raises(ModelLoadError, match="not a state_dict"):
        read_state_dict(str(tmp_path / "ckpt.pth"), CPU)
    with pytest.raises(ModelLoadError, match=r"'nothing\.pth' is missing from the MAR"):
        read_state_dict(str(tmp_path / "nothing.pth"), CPU)


def test_unknown_builder_and_architecture(tmp_path):
    with pytest.raises(ModelLoadError, match="builder 'keras' is not one of inspection, torchvision, file"):
        build_model({"builder": "keras"}, str(tmp_path), None)
    with pytest.raises(ModelLoadError, match="unknown torchvision architecture 'resnet5'"):
        build_model({"builder": "torchvision", "arch": "resnet5"}, str(tmp_path), None)


def test_googlenet_checkpoints_with_or_without_aux_heads(tmp_path):
    import torchvision

    with_aux = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False).state_dict()
    without = {k: v for k, v in with_aux.items() if not k.startswith(("aux1.", "aux2."))}
    for state in (with_aux, without):
        build_model({"builder": "torchvision", "arch": "googlenet"}, str(tmp_path), state)


def test_torchvision_constructor_flags_a_state_dict_cannot_carry(tmp_path, caplog):
    # torchvision's ImageNet GoogLeNet checkpoint runs with transform_input=True: a flag, not a tensor,
    # so without kwargs the worker built another model from the same weights (other predictions).
    import torchvision

    torch.manual_seed(0)
    user = torchvision.models.googlenet(weights=None, transform_input=True, aux_logits=False, init_weights=True).eval()
    spec = {"builder": "torchvision", "arch": "googlenet", "kwargs": {"transform_input": True}}
    served = build_model(spec, str(tmp_path), user.state_dict()).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(served(images), user(images))
    with caplog.at_level("WARNING", logger="handlers.models"):
        assert not build_model({**spec, "kwargs": {}}, str(tmp_path), user.state_dict()).transform_input
    assert "pass --model-kwargs '{\"transform_input\": true}'" in caplog.text
    with pytest.raises(ModelLoadError, match=r"get_model\('googlenet'.*failed: TypeError"):
        build_model({**spec, "kwargs": {"transform": True}}, str(tmp_path), None)


def test_labels(tmp_path):
    path = tmp_path / "index_to_name.json"
    path.write_text(json.dumps({"0": "ok", "1": ["n01", "scratch"], "2": "dent"}))
    assert read_labels(str(path), 3) == ["ok", "scratch", "dent"]
    with pytest.raises(ModelLoadError, match="has 3 labels but the model outputs 4 classes"):
        read_labels(str(path), 4)
    assert read_labels(str(tmp_path / "absent.json"), 2) == ["0", "1"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (["ok", "2", "dent"], "label 1 '2' is a number"),
        (["ok", "-1"], "label 1 '-1' is a number"),
        (["ok", "ok"], "duplicate labels 'ok'"),
        (["ok", ""], "label 1 '' is empty"),
        (["ok", "a,b"], "label 1 'a,b' contains a comma"),
        (["ok", "\tdent"], "label 1 '\\tdent' has leading or trailing whitespace"),
        (["ok", "de\nnt"], "label 1 'de\\nnt' contains a control character"),
        (["ok", None], "label 1 is None, not a string"),
        (["ok", ["n01", 3]], "label 1 is ['n01', 3], not a string"),
        ({"0": "ok", "2": "dent", "5": "x"}, 'keys must be "0".."5" with none missing; missing: 1, 3, 4'),
        ({"0": "ok", "01": "dent"}, "without leading zeros; got '01'"),
        ([], "no labels"),
        ("ok", "labels must be a JSON list"),
    ],
)
def test_one_set_of_label_rules(data, expected):
    with pytest.raises(ModelLoadError, match=re.escape(expected)):
        parse_labels(data, "labels.json")


def test_worker_labels_use_the_same_rules(tmp_path):
    path = tmp_path / "index_to_name.json"
    path.write_text(json.dumps({"0": "ok", "1": "1", "2": "dent"}))
    with pytest.raises(ModelLoadError, match=r"index_to_name\.json: label 1 '1' is a number"):
        read_labels(str(path), 3)
    path.write_bytes(json.dumps({"0": "ok", "1": "Kratzer", "2": "Delle"}).encode("utf-16"))
    with pytest.raises(ModelLoadError, match=r"index_to_name\.json is not UTF-8 text"):
        read_labels(str(path), 3)


def test_label_file_formats(tmp_path):
    (tmp_path / "a.txt").write_text("ok\r\nscratch\r\ndent\r\n\n")
    (tmp_path / "b.json").write_text('["ok", "scratch", "dent"]')
    (tmp_path / "c.json").write_bytes('\ufeff{"0": "ok", "1": ["n1", "Kratzer"], "2": "Ölfleck"}'.encode())
    assert read_label_file(str(tmp_path / "a.txt")) == read_label_file(str(tmp_path / "b.json"))
    assert read_label_file(str(tmp_path / "c.json")) == ["ok", "Kratzer", "Ölfleck"]


MODEL_FILE = """
from torch import nn


class Net(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
"""


@pytest.mark.parametrize(
    ("source", "spec", "error", "expected"),
    [
        ("raise ImportError('needs timm')", {}, ModelLoadError, "'m.py' failed to import: ImportError: needs timm"),
        ("def broken(:\n", {}, ModelLoadError, "'m.py' failed to import: SyntaxError"),
        (MODEL_FILE + "\nclass Head(nn.Module):\n    pass\n", {}, ModelClassError, "found: Head, Net"),
        (MODEL_FILE, {"class": "Other"}, ModelClassError, "found: Net"),
        (MODEL_FILE, {"kwargs": {"depth": 2}}, ModelLoadError, "Net(**{'depth': 2}) failed: TypeError"),
        (MODEL_FILE, {"kwargs": [2]}, ModelLoadError, "kwargs must be a mapping"),
    ],
)
def test_model_file_failures_are_one_line(tmp_path, source, spec, error, expected):
    (tmp_path / "m.py").write_text(source)
    with pytest.raises(error, match=re.escape(expected)) as raised:
        build_model({"builder": "file", "file": "m.py", **spec}, str(tmp_path), None)
    assert "\n" not in str(raised.value)


def test_weight_mismatch_is_summarised_on_one_line(tmp_path):
    (tmp_path / "m.py").write_text(MODEL_FILE)
    state = {"conv.weight": torch.zeros(8, 3, 3, 3), "conv.bias": torch.zeros(8), "extra": torch.zeros(1)}
    with pytest.raises(ModelLoadError) as raised:
        build_model({"builder": "file", "file": "m.py"}, str(tmp_path), state)
    assert str(raised.value) == (
        "weights do not fit the Net architecture: unexpected keys extra; shape mismatch at "
        "conv.weight (file [8, 3, 3, 3], model [4, 3, 3, 3]), conv.bias (file [8], model [4])"
    )
