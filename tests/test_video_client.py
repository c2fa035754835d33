"""The video client's fast paths: frames drawn on their yuv420p planes as overlay_on_original draws them,
frames sent converted (and shrunk) in one FFmpeg pass, raw frames on kept-alive HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from fractions import Fraction
from typing import ClassVar

import av
import numpy as np
import pytest
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image

from handlers.client.api import ApiError, ExplainClient, ServerUnreachable
from handlers.client.drawing import FrameDrawer, Layer, layout
from handlers.client.original import placed_box
from handlers.client.video import (
    VideoWriter,
    blank,
    plain,
    planes_of,
    reduction,
    sent_picture,
    sent_size,
    upright,
    yuv420p,
)
from handlers.inspection import scenes
from handlers.render.original import overlay_on_original
from handlers.testing.local_http import JsonHandler, serving
from handlers.testing.torchserve import free_port

SIZES = [(256, 192), (640, 480), (31, 57)]
LUMA_TOLERANCE = 2  # levels of Y: rounding only (the blend is linear in Y as in R, G and B)
CHROMA_TOLERANCE = 12  # levels of U and V where a map cell spans at least 8 x 6 chroma samples (see below)


def boxes(width: int, height: int) -> list[tuple[float, ...]]:
    """The whole frame, a centre crop, a box past two edges, a box entirely outside."""
    return [
        (0, 0, width, height),
        (0.1 * width, 0, 0.9 * width, height),
        (-10.5, -3.2, 0.7 * width, height + 4.1),
        (width + 5, 0, width + 50, height),
    ]


def decoded_frame(size: tuple[int, int], seed: int) -> av.VideoFrame:
    """A natural yuv420p frame of ``size`` as a decoder hands it out: a production-line picture converted by FFmpeg."""
    picture = Image.fromarray(scenes.footage(seed, (256, 192), 1)[0].image).resize(size, Image.Resampling.BILINEAR)
    return av.VideoFrame.from_image(picture).reformat(format="yuv420p")


def drawn_planes(drawer: FrameDrawer, frame: av.VideoFrame, heatmap: np.ndarray, box) -> list[np.ndarray]:
    source = planes_of(frame)
    _, target = blank((source[0].shape[1], source[0].shape[0]))
    drawer.draw((frame.width, frame.height), source, heatmap, box, target)
    return [np.asarray(plane, dtype=np.int16) for plane in target]


def image_overlay_planes(frame: av.VideoFrame, heatmap: np.ndarray, box, alpha: float) -> list[np.ndarray]:
    """The image overlay (RGB) of the decoded frame, converted for the encoder as FFmpeg does: what the video
    got before frames were drawn in YUV."""
    overlay = overlay_on_original(frame.to_image(), heatmap, box, alpha)
    even = (frame.width - frame.width % 2, frame.height - frame.height % 2)
    converted = av.VideoFrame.from_image(overlay.crop((0, 0, *even))).reformat(format="yuv420p")
    return [np.asarray(plane, dtype=np.int16) for plane in planes_of(converted)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("cells", [(16, 16), (7, 7), (14, 10)])
def test_frames_are_drawn_as_the_image_overlay_converted_for_the_encoder(size, cells):
    """Drawn on the yuv420p planes, a frame equals overlay_on_original's RGB picture converted to yuv420p
    by FFmpeg: Y within 2 levels for every frame size, box and grid (the odd last row and column left off).
    U and V (one sample per 2 x 2 pixels) take the map at the sample instead of averaging jet's colours
    over its pixels: they agree within CHROMA_TOLERANCE where a map cell spans >= 8 x 6 chroma samples
    (random maps, steeper than any real one); on the 31 x 57 frame a cell is 1 to 4 chroma samples, where
    chroma can't follow the map either way, and luma alone is compared."""
    rng = np.random.default_rng(sum(size) + sum(cells))
    frame = decoded_frame(size, sum(size))
    drawer = FrameDrawer(0.4)
    chroma_cells = min(size[0] // 2 / cells[1], size[1] // 2 / cells[0])
    for box in boxes(*size):
        heatmap = rng.random(cells)
        drawn = drawn_planes(drawer, frame, heatmap, box)
        expected = image_overlay_planes(frame, heatmap, box, 0.4)
        assert [plane.shape for plane in drawn] == [plane.shape for plane in expected]
        assert np.abs(drawn[0] - expected[0]).max() <= LUMA_TOLERANCE, box
        if chroma_cells >= 6:
            for plane, reference in zip(drawn[1:], expected[1:], strict=True):
                assert np.abs(plane - reference).max() <= CHROMA_TOLERANCE, box


@pytest.mark.parametrize("cells", [(16, 16), (7, 7), (14, 10), (3, 5)])
def test_the_map_taken_band_by_band_is_the_whole_product(cells):
    """Large planes take the second product over the 4 map columns each column reads: the same levels as the
    whole product (float32 sums in another order: at most one step apart)."""
    rng = np.random.default_rng(sum(cells))
    for box in boxes(1280, 720):
        placed = layout((1280, 720), (1280, 720), box, cells).luma
        if placed.area[2] <= placed.area[0]:
            continue
        assert placed.bands or cells[1] <= 4
        whole = Layer(placed.area, placed.down, placed.across)
        heatmap = rng.random(cells).astype(np.float32)
        levels = placed.levels(heatmap).astype(np.int32)
        assert np.abs(levels - whole.levels(heatmap)).max() <= 1, box


def test_a_drawer_follows_a_new_box_and_new_frame_size():
    """The layout is cached per (size, box, grid): a change of any of them is drawn afresh, not from the cache."""
    rng = np.random.default_rng(3)
    drawer = FrameDrawer(0.5)
    heatmap = rng.random((8, 8))
    for size, box in [((120, 80), (0, 0, 120, 80)), ((120, 80), (20, 0, 100, 80)), ((90, 60), (20, 0, 100, 80))]:
        frame = decoded_frame(size, 3)
        expected = image_overlay_planes(frame, heatmap, box, 0.5)
        assert np.abs(drawn_planes(drawer, frame, heatmap, box)[0] - expected[0]).max() <= LUMA_TOLERANCE


@pytest.mark.parametrize(
    ("source", "conversion"),
    [
        ("yuvj420p", {"format": "yuvj420p"}),  # MJPEG: full range
        ("yuv444p", {"format": "yuv444p"}),
        ("BT.709", {"format": "yuv420p", "dst_colorspace": Colorspace.ITU709}),
        ("full-range yuv420p", {"format": "yuv420p", "dst_color_range": ColorRange.JPEG}),
    ],
)
def test_any_decoded_frame_becomes_the_encoders_yuv420p_with_its_colours(source, conversion):
    """Frames drawn on and written are limited-range BT.601 yuv420p (the untagged output's meaning, as when frames
    went through RGB): a full-range, 4:4:4 or BT.709 frame is converted, so its colours stay within a few levels
    (two chroma subsamplings), where its values taken as they are would be off by up to 32."""
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = np.linspace(0, 255, 64)[None], np.linspace(30, 220, 48)[:, None], 140
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(**conversion)
    copy = plain(yuv420p(frame))  # a fresh frame: untagged, as the encoder's are
    shown = copy.to_ndarray(format="rgb24").astype(np.int16)
    assert np.abs(shown - rgb).max() <= 10 and np.abs(shown - rgb).mean() <= 4, source


def test_a_limited_range_bt601_yuv420p_frame_is_used_as_decoded():
    frame = decoded_frame((64, 48), 1)
    assert yuv420p(frame) is frame


def test_frames_between_explained_ones_are_copied_whole():
    """A plain frame is the decoded planes as they were (an odd last row and column left off), in a frame of its own."""
    frame = decoded_frame((63, 47), 5)
    copy = plain(frame)
    assert (copy.width, copy.height) == (62, 46)
    for written, source in zip(planes_of(copy), planes_of(frame), strict=True):
        assert np.array_equal(written, source)


@pytest.mark.parametrize(
    ("rotation", "dark_corner"),
    [(0, (0, 0)), (90, (1, 0)), (-90, (0, 1)), (180, (1, 1))],  # (bottom?, right?) of the upright frame
)
def test_a_phone_video_is_turned_upright_as_players_show_it(tmp_path, rotation, dark_corner):
    """A display rotation (counterclockwise degrees) is applied to each decoded frame, as FFmpeg's autorotate
    does: the model sees the scene upright and the output plays upright with no rotation of its own."""
    path = tmp_path / "phone.mp4"
    stored = np.full((48, 64, 3), 200, np.uint8)
    stored[:12, :16] = 20  # a dark block at the stored frame's top left
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(rotation)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        frame = upright(next(container.decode(video=0)))
    assert (frame.width, frame.height) == ((48, 64) if rotation % 180 else (64, 48))
    luma = planes_of(frame)[0]
    rows, columns = np.nonzero(luma < 80)
    half_height, half_width = luma.shape[0] / 2, luma.shape[1] / 2
    assert rows.size and (rows.min() >= half_height, columns.min() >= half_width) == tuple(map(bool, dark_corner))
    assert rows.max() < half_height or rows.min() >= half_height  # one corner, not smeared


class _Frames(JsonHandler):
    """Answers raw frames like our handler: an answer per frame, 400 for an empty one, text for b'text'.

    Records the client's connections (by port) and the option headers; b'close' answers and closes."""

    protocol_version = "HTTP/1.1"
    ports: ClassVar[list[int]] = []
    headers_seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).ports.append(self.client_address[1])
        type(self).headers_seen.append({k: v for k, v in self.headers.items() if k.startswith("X-Explain")})
        if body == b"text":
            self.send_json(200, b"not json")
        elif not body:
            self.send_json(400, json.dumps({"error": "empty image: send an image"}).encode())
        else:
            self.send_json(200, json.dumps({"predictions": [{"label": "ok", "size": len(body)}]}).encode())
        if body == b"close":
            self.close_connection = True


@pytest.fixture
def frames_server() -> Iterator[str]:
    _Frames.ports, _Frames.headers_seen = [], []
    with serving(_Frames) as url:
        yield url


def test_raw_frames_share_one_kept_alive_connection_per_thread(frames_server):
    client = ExplainClient(frames_server, "inspection")
    answers = [client.explain_raw(b"x" * n, {"format": "grid", "top_k": "1"}) for n in (1, 2, 3)]
    client.close()
    assert [a["predictions"][0]["size"] for a in answers] == [1, 2, 3]
    assert len(set(_Frames.ports)) == 1, "one connection for every frame of the thread"
    assert {k.lower(): v for k, v in _Frames.headers_seen[0].items()} == {
        "x-explain-format": "grid",
        "x-explain-top-k": "1",
    }


def test_a_connection_the_server_closed_is_replaced(frames_server):
    """The server may close a kept-alive connection between frames: the next frame goes out on a new one."""
    client = ExplainClient(frames_server, "inspection")
    client.explain_raw(b"close", {})
    assert client.explain_raw(b"after", {})["predictions"][0]["size"] == 5
    client.close()
    assert len(set(_Frames.ports)) == 2


def test_raw_frame_errors_say_what_went_wrong(frames_server):
    client = ExplainClient(frames_server, "inspection")
    with pytest.raises(ApiError, match=r"HTTP 400: empty image"):
        client.explain_raw(b"", {})
    with pytest.raises(ApiError, match="not JSON"):
        client.explain_raw(b"text", {})
    client.close()


def test_no_server_is_unreachable_not_a_frame_error():
    client = ExplainClient(f"http://127.0.0.1:{free_port()}", "inspection", timeout=5)
    with pytest.raises(ServerUnreachable, match="cannot connect"):
        client.explain_raw(b"frame", {})
    client.close()


@pytest.mark.parametrize(
    ("frame", "box", "model_input", "factor"),
    [
        ((256, 192), (0, 0, 256, 192), (128, 128), 1),  # the test video: nothing to spare
        ((640, 480), (0, 0, 640, 480), (128, 128), 1),  # 3.75 pixels per input pixel down the side: 1.9x only
        ((1024, 768), (0, 0, 1024, 768), (128, 128), 3),  # 6 per input pixel: a third leaves 2
        ((1920, 1080), (487.5, 67.5, 1432.5, 1012.5), (224, 224), 2),  # resize 256, crop 224: 4.2 per input pixel
    ],
)
def test_frames_are_shrunk_as_the_server_would_decode_them(frame, box, model_input, factor):
    """The whole factor leaves >= 2 frame pixels per model input pixel on both axes, like the server's own
    reduced decoding (resize 256: shorter side // 512; stretch: min(width // 2w, height // 2h))."""
    assert reduction(box, model_input) == factor
    sent = sent_picture(av.VideoFrame(frame[0], frame[1], "yuv420p"), factor)
    assert sent.size == (round(frame[0] / factor), round(frame[1] / factor)) == sent_size(frame, factor)


def test_a_frame_sent_whole_is_the_decoded_frame_in_rgb():
    """Unshrunk, the sent picture has the pixels PyAV's own conversion gives (``to_image``)."""
    frame = decoded_frame((63, 47), 7)
    assert np.array_equal(np.asarray(sent_picture(frame, 1)), np.asarray(frame.to_image()))


def test_a_shrunk_frame_is_the_frame_averaged_down():
    """Shrunk by 3, each sent pixel is close to the mean of its 3 x 3 block of the frame (one FFmpeg pass)."""
    frame = decoded_frame((600, 450), 9)
    full = np.asarray(frame.to_image(), dtype=np.float64)
    blocks = full.reshape(150, 3, 200, 3, 3).mean(axis=(1, 3))
    sent = np.asarray(sent_picture(frame, 3), dtype=np.float64)
    assert sent.shape == blocks.shape and np.abs(sent - blocks).mean() < 2.0


def test_the_geometry_of_a_shrunk_frame_scales_back_to_the_frame():
    """The server reports the box in the sent picture's pixels; the client places it on the full frame."""
    sent = sent_size((1000, 750), 3)
    answer = {"geometry": {"original_size": list(sent), "box": [0, 0, *sent]}}
    assert placed_box(answer, (1000, 750)) == pytest.approx((0, 0, 1000, 750))


@pytest.mark.parametrize(
    ("times", "rate"),
    [
        ([3.0 + i / 25 for i in range(10)], Fraction(25)),  # constant 25 fps, starting 3 s into the source
        ([0.0, 0.033, 0.066, 0.1, 0.2, 0.3, 0.333, 0.366, 0.6, 0.633], Fraction(30)),  # a phone's variable rate
    ],
)
def test_frames_are_written_at_their_source_times(tmp_path, times, rate):
    """Each frame keeps its source time (from the first one's), so a variable frame rate keeps time; a constant
    one keeps its rate."""
    writer = VideoWriter(tmp_path / "out.mp4", rate, (64, 48), "libx264")
    for time in times:
        writer.write(blank((64, 48))[0], time)
    writer.close()
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        written = [float(frame.time) for frame in container.decode(stream)]
        assert written == pytest.approx([time - times[0] for time in times], abs=1e-4)
        if rate == 25:
            assert stream.average_rate == 25
