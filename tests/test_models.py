"""Model building, safe weight loading and labels: the failures users must understand."""

from __future__ import annotations

import json

import pytest
import torch

from handlers.inspection.network import InspectionNet
from handlers.models import ModelLoadError, build_model, read_labels, read_state_dict

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


def test_labels(tmp_path):
    path = tmp_path / "index_to_name.json"
    path.write_text(json.dumps({"0": "ok", "1": ["n01", "scratch"], "2": "dent"}))
    assert read_labels(str(path), 3) == ["ok", "scratch", "dent"]
    with pytest.raises(ModelLoadError, match="has 3 labels but the model outputs 4 classes"):
        read_labels(str(path), 4)
    assert read_labels(str(tmp_path / "absent.json"), 2) == ["0", "1"]
