"""The answer's JSON bytes: grid heatmaps written from a table, byte for byte what json.dumps writes."""

from __future__ import annotations

import json

import pytest
import torch

from handlers.render import normalise, to_grid
from handlers.serving.response import HEATMAP_DECIMALS, encode


def _plain(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _grid(seed: int, shape: tuple[int, int] = (16, 16)) -> list[list[float]]:
    values = torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(seed)))
    return to_grid(normalise(values), HEATMAP_DECIMALS)


def _body(*grids: list[list[float]], label: str = "cat") -> dict:
    return {
        "predictions": [{"index": 0, "label": label, "probability": 0.9731}],
        "explanations": [
            {"method": "gradcam", "target": {"index": 0, "label": label}, "format": "grid", "heatmap": grid}
            for grid in grids
        ],
        "geometry": {"original_size": [224, 224], "box": [0.0, 0.0, 224.0, 224.0]},
    }


@pytest.mark.parametrize("seed", range(5))
def test_grids_are_written_as_json_dumps_writes_them(seed):
    body = _body(_grid(seed), _grid(seed + 10, (7, 9)), [[0.0, 1.0], [0.5, 0.001]])
    assert encode(body) == _plain(body)
    assert body["explanations"][0]["heatmap"] == _grid(seed)  # the body itself is left as it was


def test_bodies_without_grids_or_with_other_values_are_plain_json():
    refusal = {"error": "option 'top_k' must be from 1 to 1000, got 0"}
    assert encode(refusal) == _plain(refusal)
    unrounded = _body([[0.1234, 0.5], [2.0, -1.0]])  # not thousandths from 0 to 1: json.dumps writes it
    assert encode(unrounded) == _plain(unrounded)
    assert encode(_body()) == _plain(_body())


def test_a_label_holding_the_placeholder_cannot_break_the_answer():
    body = _body(_grid(1), label="\x00grid 0\x00")
    assert encode(body) == _plain(body)


def test_negative_zero_reads_back_as_zero():
    body = _body([[-0.0, 0.25]])
    assert json.loads(encode(body)) == body
