"""Maps drawn over the original picture: bicubic into the box the model saw, the rest visible but marked unseen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from handlers.client.api import ApiError
from handlers.client.original import draw, peak_on_original, placed_box
from handlers.client.video import Schedule
from handlers.render.colormap import jet
from handlers.render.original import UNSEEN_KEEP, overlay_on_original, peak, upsample


@pytest.mark.parametrize(("cells", "size"), [((16, 16), (300, 200)), ((7, 7), (224, 224)), ((14, 10), (31, 57))])
def test_upsampling_is_pytorch_bicubic_on_a_whole_pixel_box(cells, size):
    heatmap = np.random.default_rng(0).random(cells)
    width, height = size
    rows, columns, values = upsample(heatmap, (0, 0, width, height), size)
    expected = F.interpolate(torch.tensor(heatmap)[None, None], size=(height, width), mode="bicubic")[0, 0]
    assert list(rows) == list(range(height)) and list(columns) == list(range(width))
    assert np.abs(values - expected.clamp(0, 1).numpy()).max() < 1e-9


def test_a_box_inside_the_image_is_drawn_only_there():
    """Only pixels whose centres are in [x0, x1) x [y0, y1) get the map; a shifted box shifts the same values."""
    heatmap = np.random.default_rng(1).random((16, 16))
    rows, columns, values = upsample(heatmap, (40, 10, 140, 110), (200, 150))
    assert (rows[0], rows[-1], columns[0], columns[-1]) == (10, 109, 40, 139)
    _, _, at_origin = upsample(heatmap, (0, 0, 100, 100), (100, 100))
    assert np.array_equal(values, at_origin)


def test_a_box_past_the_image_is_clipped_and_a_constant_map_stays_constant():
    rows, columns, values = upsample(np.full((4, 4), 0.25), (-10.5, -3.2, 60.7, 40.1), (50, 30))
    assert (rows[0], rows[-1], columns[0], columns[-1]) == (0, 29, 0, 49)
    assert np.allclose(values, 0.25)


def test_overlay_blends_inside_and_marks_the_rest_unseen():
    grey = Image.new("RGB", (120, 80), (200, 200, 200))
    heatmap = np.zeros((4, 4))
    heatmap[1, 2] = 1.0
    box = (20, 0, 100, 80)
    drawn = np.asarray(overlay_on_original(grey, heatmap, box, alpha=0.5), dtype=np.float64)
    _, _, values = upsample(heatmap, box, grey.size)
    inside = drawn[2:78, 22:98]
    expected = 0.5 * 200 + 0.5 * jet(values).astype(np.float64)
    assert np.abs(inside - expected[2:78, 2:78]).max() <= 1
    outside = drawn[:, :18]
    assert outside.max() < 200 and np.median(outside) == pytest.approx(200 * UNSEEN_KEEP, abs=1)
    assert (drawn[10:70, 20] == 255).all() and (drawn[10:70, 99] == 255).all(), "the box is outlined"


def test_alpha_zero_keeps_the_picture_and_a_whole_image_box_draws_no_frame():
    picture = Image.fromarray(np.random.default_rng(2).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    same = overlay_on_original(picture, np.random.default_rng(3).random((8, 8)), (0, 0, 90, 60), alpha=0.0)
    assert np.array_equal(np.asarray(same), np.asarray(picture))


def test_peak_is_the_hottest_cells_centre_in_original_pixels():
    heatmap = np.zeros((16, 16))
    heatmap[3, 10] = 1.0
    assert peak(heatmap, (100, 50, 420, 370)) == (100 + 10.5 * 20, 50 + 3.5 * 20)


def answer_for(size, box, heatmap):
    return {
        "predictions": [{"index": 1, "label": "scratch", "probability": 0.9}],
        "explanations": [{"method": "gradcam", "format": "grid", "heatmap": heatmap.tolist()}],
        "geometry": {"original_size": list(size), "box": list(box)},
    }


def test_client_scales_the_box_to_the_picture_it_opened():
    """Should the client read the picture at another size than the server, the box follows the picture."""
    answer = answer_for((400, 300), (40, 30, 360, 270), np.eye(4))
    assert placed_box(answer, (200, 150)) == (20, 15, 180, 135)
    assert draw(Image.new("RGB", (200, 150)), answer, answer["explanations"][0], 0.5).size == (200, 150)
    assert peak_on_original(answer, answer["explanations"][0]) == (40 + 0.5 * 80, 30 + 0.5 * 60)


def test_client_refuses_answers_it_cannot_place():
    answer = answer_for((40, 30), (0, 0, 40, 30), np.eye(4))
    del answer["geometry"]
    with pytest.raises(ApiError, match="no geometry"):
        draw(Image.new("RGB", (40, 30)), answer, answer["explanations"][0], 0.5)
    tiles = {"method": "activations", "format": "tiles", "png": "..."}
    with pytest.raises(ApiError, match="no heatmap grid"):
        draw(Image.new("RGB", (40, 30)), answer_for((40, 30), (0, 0, 40, 30), np.eye(4)), tiles, 0.5)


@pytest.mark.parametrize(
    ("fps", "times", "taken"),
    [
        (None, [0.0, 0.1, 0.2], [True, True, True]),
        (2.5, [i / 10 for i in range(10)], [True, False, False, False, True, False, False, False, True, False]),
        (4.0, [i / 3 for i in range(4)], [True, True, True, True]),  # above the source's 3 frames/s: every frame
    ],
)
def test_schedule_explains_the_first_frame_of_each_period(fps, times, taken):
    schedule = Schedule(fps)
    assert [schedule.take(t) for t in times] == taken
