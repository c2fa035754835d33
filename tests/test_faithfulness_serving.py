"""The ``faithfulness`` option served by the handler on the default model's MAR, batch by batch like a worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.archive import main as archive_main
from handlers.inspection import CLASSES
from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import load_context, run_batch, unpack_mar

SAMPLES = Path(__file__).resolve().parents[1] / "handlers" / "inspection" / "samples"
FIELDS = ("score", "confidence_drop", "confidence_increase", "evidence_kept", "coverage")


def _handler(directory: Path, *flags: str) -> GradCamHandler:
    directory.mkdir(parents=True, exist_ok=True)
    archive_main(["inspection", "--name", "inspection", "--export-path", str(directory), "--no-check", *flags])
    handler = GradCamHandler()
    handler.initialize(load_context(unpack_mar(directory / "inspection.mar", directory / "model"), "inspection"))
    return handler


@pytest.fixture(scope="module")
def handler(tmp_path_factory) -> GradCamHandler:
    return _handler(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def measuring(tmp_path_factory) -> GradCamHandler:
    """A model whose default is faithfulness=drop, with at most 4 deletion/insertion steps."""
    return _handler(tmp_path_factory.mktemp("measuring"), "--faithfulness", "drop", "--max-faithfulness-steps", "4")


def _image(name: str) -> bytearray:
    return bytearray((SAMPLES / f"{name}.png").read_bytes())


def _row(name: str, **fields) -> dict:
    return {"data": _image(name), **{k: str(v).encode() for k, v in fields.items()}}


def test_each_explanation_gets_its_measure_and_the_prediction_is_unchanged(handler):
    rows = [
        _row("scratch"),
        _row("scratch", faithfulness="drop"),
        _row("scratch_dent", faithfulness="full", target="scratch,dent"),
        _row("dent", faithfulness="full", faithfulness_steps=4, method="layercam"),
    ]
    statuses, bodies, _ = run_batch(handler, rows)
    assert statuses == [200] * 4
    assert bodies[0]["predictions"] == bodies[1]["predictions"]
    assert "faithfulness" not in bodies[0]["explanations"][0]
    drop = bodies[1]["explanations"][0]["faithfulness"]
    assert set(drop) == set(FIELDS)
    assert drop["score"] > 0.8 and drop["confidence_drop"] < 0.1 and drop["coverage"] < 0.2
    both = bodies[2]["explanations"]
    assert [e["target"]["label"] for e in both] == ["scratch", "dent"]
    for entry in both:
        measured = entry["faithfulness"]
        assert set(measured) == {*FIELDS, "deletion_auc", "insertion_auc"}
    dent = bodies[3]["explanations"][0]["faithfulness"]
    assert dent["insertion_auc"] > 0.5 > dent["deletion_auc"]  # the dent's own pixels carry its probability


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"faithfulness": "maybe"}, "option 'faithfulness' must be one of off, drop, full"),
        ({"faithfulness": "full", "faithfulness_steps": "1"}, "option 'faithfulness_steps' must be from 2"),
        ({"faithfulness": "full", "faithfulness_steps": "33"}, "max_faithfulness_steps"),
        ({"faithfulness": "full", "faithfulness_steps": "x"}, "option 'faithfulness_steps' must be an integer"),
        ({"faithfulness": "drop", "faithfulness_steps": "4"}, "applies to faithfulness=full only"),
        ({"faithfulness": "drop", "method": "eigencam"}, "applies to class-specific methods only, not to 'eigencam'"),
        ({"faithfulness": "drop", "method": "none"}, "not to 'none'"),
    ],
)
def test_bad_values_are_that_requests_400_naming_the_option(handler, fields, expected):
    statuses, bodies, _ = run_batch(handler, [_row("dent", **fields), _row("dent", faithfulness="drop")])
    assert statuses == [400, 200]
    assert expected in bodies[0]["error"]
    assert bodies[1]["explanations"][0]["faithfulness"]["score"] is not None


def test_options_come_from_headers_too(handler):
    statuses, bodies, _ = run_batch(handler, [_row("scratch")], [{"X-Explain-Faithfulness": "full"}])
    assert statuses == [200]
    assert "deletion_auc" in bodies[0]["explanations"][0]["faithfulness"]


def test_model_default_measures_and_says_where_it_does_not_apply(measuring):
    rows = [
        _row("dent"),
        _row("dent", method="eigencam"),
        _row("dent", method="activations", channels=2),
        _row("dent", faithfulness="off"),
        _row("dent", faithfulness="full", faithfulness_steps=5),
        _row("dent", target="ok"),
    ]
    statuses, bodies, _ = run_batch(measuring, rows)
    assert statuses == [200, 200, 200, 200, 400, 200]
    assert bodies[0]["explanations"][0]["faithfulness"]["score"] > 0.8
    for body in bodies[1:3]:
        for entry in body["explanations"]:
            assert entry["faithfulness"]["score"] is None
            assert "does not apply" in entry["faithfulness"]["note"]
    assert "faithfulness" not in bodies[3]["explanations"][0]
    assert "from 2 to 4 (max_faithfulness_steps)" in bodies[4]["error"]
    ok = bodies[5]["explanations"][0]["faithfulness"]  # a dent is no likelier "ok" than a blank surface
    assert ok["score"] is None and "no evidence" in ok["note"] and ok["confidence_drop"] is not None
    description = measuring.description()
    assert description["defaults"]["faithfulness"] == "drop"
    assert description["limits"]["max_faithfulness_steps"] == 4
    assert CLASSES[bodies[0]["explanations"][0]["target"]["index"]] == "dent"
