"""The answer's JSON bytes: grid heatmaps written from their own text, byte for byte what json.dumps writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from handlers.render import normalise
from handlers.serving.response import HEATMAP_DECIMALS, Grid, encode, grid


def to_grid(values: torch.Tensor, decimals: int) -> list[list[float]]:
    """The plain way to a map's JSON form: floats rounded by numpy, as the answer's were before."""
    return np.round(values.numpy().astype(np.float64), decimals).tolist()


def _plain(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _map(seed: int, shape: tuple[int, int] = (16, 16)) -> torch.Tensor:
    return normalise(torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(seed))))


def _body(*grids: list[list[float]], label: str = "cat") -> dict:
    return {
        "predictions": [{"index": 0, "label": label, "probability": 0.9731}],
        "explanations": [
            {"method": "gradcam", "target": {"index": 0, "label": label}, "format": "grid", "heatmap": rows}
            for rows in grids
        ],
        "geometry": {"original_size": [224, 224], "box": [0.0, 0.0, 224.0, 224.0]},
    }


@pytest.mark.parametrize("shape", [(16, 16), (7, 9), (1, 5), (5, 1), (14, 14)])
def test_a_grid_holds_the_rounded_values_and_their_json(shape):
    for seed in range(4):
        heatmap = _map(seed, shape)
        made = grid(heatmap)
        assert made == to_grid(heatmap, HEATMAP_DECIMALS)
        assert made.text == json.dumps(to_grid(heatmap, HEATMAP_DECIMALS), separators=(",", ":"))


def test_grids_are_written_as_json_dumps_writes_them():
    body = _body(grid(_map(1)), grid(_map(2, (7, 9))), grid(torch.tensor([[0.0, 1.0], [0.5, 0.001]])))
    assert encode(body) == _plain(body)
    assert isinstance(body["explanations"][0]["heatmap"], Grid)  # the body itself is left as it was


def test_values_outside_0_to_1_and_other_bodies_are_plain_json():
    outside = grid(torch.tensor([[0.5, 2.0], [-1.0, float("nan")]]))
    assert outside.text is None
    body = _body(outside, [[0.1234, 0.5]])
    assert encode(body) == _plain(body)
    refusal = {"error": "option 'top_k' must be from 1 to 1000, got 0"}
    assert encode(refusal) == _plain(refusal)
    assert encode(_body()) == _plain(_body())


def test_a_label_holding_the_placeholder_cannot_break_the_answer():
    body = _body(grid(_map(3)), label="\x00grid 0\x00")
    assert encode(body) == _plain(body)


def test_negative_zero_reads_back_as_zero():
    body = _body(grid(torch.tensor([[-0.0, 0.25]])))
    assert json.loads(encode(body)) == body
