"""``torchserve-gradcam video`` against a real TorchServe, on a generated production-line video with ground truth.

The video (``scenes.footage``): a plain surface, a scratch crossing it, plain again, then a dent
appearing; 48 frames of 256 x 192 at 10 frames/s, H.264. The default model stretches each frame
to 128 x 128, so each of its 16 x 16 map cells covers 16 x 12 frame pixels.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from handlers.client.api import ApiError, ExplainClient
from handlers.client.cli import main
from handlers.client.pipeline import Request
from handlers.client.video import VideoExplainer, VideoSettings, encode_frame
from handlers.inspection import scenes

pytestmark = pytest.mark.integration

SEED = 20261127  # not a training seed
SIZE = (256, 192)
FRAMES = 48
FPS = 10
GRID = (16, 16)
TRACKING_TARGET = 0.9
REPO = Path(__file__).resolve().parents[2]


def run_cli(*argv: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(["video", *argv])


def decoded(path: Path) -> tuple[list[np.ndarray], Fraction | None]:
    """Every frame of a video file as RGB arrays, and its frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)], stream.average_rate


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> tuple[list[scenes.Frame], Path]:
    folder = tmp_path_factory.mktemp("footage")
    frames = scenes.footage(SEED, SIZE, FRAMES)
    scenes.write_video([frame.image for frame in frames], folder / "line.mp4", FPS)
    return frames, folder / "line.mp4"


@pytest.fixture(scope="module")
def explained(server, footage, tmp_path_factory) -> tuple[int, Path]:
    """The whole video explained with Grad-CAM (every frame): exit status and the output video's path."""
    out = tmp_path_factory.mktemp("explained") / "line.explained.mp4"
    server_args = ["--url", server.url(), "--management-url", server.url("management")]
    return run_cli(str(footage[1]), "--out", str(out), *server_args), out


def test_the_overlay_video_has_every_frame_at_the_source_rate(explained):
    status, out = explained
    assert status == 0
    frames, rate = decoded(out)
    assert len(frames) == FRAMES and rate == FPS
    assert all(frame.shape == (SIZE[1], SIZE[0], 3) for frame in frames)


def test_one_record_per_frame_with_its_time(explained):
    _, out = explained
    lines = records(out.with_suffix(".jsonl"))
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert [line["time"] for line in lines] == pytest.approx([i / FPS for i in range(FRAMES)])
    assert all(line["method"] == "gradcam" and line["target"] == line["label"] for line in lines)


def test_ok_frames_are_labelled_ok(explained, footage):
    _, out = explained
    frames, _ = footage
    labels = [
        line["label"]
        for line, frame in zip(records(out.with_suffix(".jsonl")), frames, strict=True)
        if frame.kind == "ok"
    ]
    assert labels == ["ok"] * len(labels) and len(labels) >= FRAMES // 5


def test_the_maps_peak_follows_the_defect(explained, footage):
    """On defect frames the peak is within one map cell of the defect (moving scratch, then dent), >= 90%."""
    _, out = explained
    frames, _ = footage
    box = (0, 0, *SIZE)
    defect = [
        (line, frame)
        for line, frame in zip(records(out.with_suffix(".jsonl")), frames, strict=True)
        if frame.kind != "ok"
    ]
    labelled = sum(line["label"] == frame.kind for line, frame in defect)
    tracked = sum(scenes.within_a_cell(frame.mask, box, GRID, line["peak"]) for line, frame in defect)
    assert labelled >= TRACKING_TARGET * len(defect) and tracked >= TRACKING_TARGET * len(defect), (labelled, tracked)
    scratch = [(line["peak"][0], frame.mask.nonzero()[1].mean()) for line, frame in defect if frame.kind == "scratch"]
    assert np.corrcoef(np.array(scratch).T)[0, 1] > 0.9, "the peak moves with the scratch"


@pytest.mark.parametrize("between", ["hold", "plain"])
def test_fewer_frames_explained_with_fps(server, footage, tmp_path, between):
    """--fps 2.5 explains every 4th frame; the others carry the last map (hold) or none (plain)."""
    _, video = footage
    out = tmp_path / f"{between}.mp4"
    server_args = ["--url", server.url(), "--management-url", server.url("management")]
    assert run_cli(str(video), "--out", str(out), "--fps", "2.5", "--between", between, *server_args) == 0
    assert [line["frame"] for line in records(out.with_suffix(".jsonl"))] == list(range(0, FRAMES, 4))
    written, _ = decoded(out)
    assert len(written) == FRAMES
    source, _ = decoded(video)
    changed = [np.abs(w.astype(float) - s).mean() for w, s in zip(written, source, strict=True)]
    between_frames = [changed[i] for i in range(FRAMES) if i % 4]
    explained_frames = [changed[i] for i in range(0, FRAMES, 4)]
    if between == "plain":
        assert max(between_frames) < 3 < min(explained_frames)
    else:
        assert min(between_frames) > 10 and min(explained_frames) > 10


class FailingFrame(ExplainClient):
    """The real client, except that the request carrying one given frame fails as a refused request would."""

    def __init__(self, *args, fail: bytes, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail = fail

    def explain_raw(self, image: bytes, fields: dict[str, str]) -> dict:
        if image == self.fail:
            raise ApiError("image is corrupt or truncated", 422)
        return super().explain_raw(image, fields)


def test_a_failed_frame_is_reported_and_left_out(server, footage, tmp_path):
    _, video = footage
    with av.open(str(video)) as container:
        sixth = next(itertools.islice(container.decode(video=0), 5, None)).to_image()
    client = FailingFrame(server.url(), "inspection", fail=encode_frame(sixth, "jpeg"))
    out = tmp_path / "gap.mp4"
    with (tmp_path / "gap.jsonl").open("w") as lines:
        tally = VideoExplainer(client, VideoSettings(Request(format="grid"), concurrency=4)).run(
            video, out, lines, lambda *_: None
        )
    client.close()
    assert (tally.explained, tally.failed, tally.written) == (FRAMES - 1, 1, FRAMES - 1)
    failed = records(tmp_path / "gap.jsonl")[5]
    assert failed == {"frame": 5, "time": 0.5, "error": "HTTP 422: image is corrupt or truncated"}
    assert len(decoded(out)[0]) == FRAMES - 1


class Counted(ExplainClient):
    """The real client, counting the frames it sends."""

    sent = 0

    def explain_raw(self, image: bytes, fields: dict[str, str]) -> dict:
        self.sent += 1
        return super().explain_raw(image, fields)


def test_a_bad_option_stops_the_run_instead_of_failing_every_frame(server, footage, tmp_path):
    _, video = footage
    client = Counted(server.url(), "inspection")
    request = Request(method="activations", format="grid", options={"channel": "500"})
    with (tmp_path / "bad.jsonl").open("w") as lines, pytest.raises(ApiError) as refused:
        VideoExplainer(client, VideoSettings(request, concurrency=4)).run(
            video, tmp_path / "bad.mp4", lines, lambda *_: None
        )
    client.close()
    assert refused.value.status == 400 and "channel" in str(refused.value) and "stopped" in str(refused.value)
    assert client.sent < FRAMES  # the frames already in flight, not the whole video


class SentSizes(ExplainClient):
    """The real client, recording the size of every frame it sends."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sizes: list[tuple[int, int]] = []

    def explain_raw(self, image: bytes, fields: dict[str, str]) -> dict:
        with Image.open(io.BytesIO(image)) as sent:
            self.sizes.append(sent.size)
        return super().explain_raw(image, fields)


def test_large_frames_go_shrunk_and_the_maps_stay_on_the_frames_pixels(server, tmp_path):
    """1024x768 frames for the 128x128 model: once the first answer's geometry is in, frames go at a third
    (341x256, still twice the model's pixels on both axes); the video keeps the full size and the records'
    peaks, in the full frame's pixels, land on the defect."""
    size, count = (1024, 768), 24
    frames = scenes.footage(SEED, size, count)
    video = tmp_path / "large.mp4"
    scenes.write_video([frame.image for frame in frames], video, FPS)
    client = SentSizes(server.url(), "inspection")
    settings = VideoSettings(Request(format="grid"), concurrency=4, model_input=(128, 128))
    out = tmp_path / "large.explained.mp4"
    with (tmp_path / "large.jsonl").open("w") as lines:
        tally = VideoExplainer(client, settings).run(video, out, lines, lambda *_: None)
    client.close()
    assert (tally.explained, tally.failed) == (count, 0)
    assert client.sizes[0] == size and client.sizes[-8:] == [(341, 256)] * 8
    assert set(client.sizes) == {size, (341, 256)}
    written, _ = decoded(out)
    assert len(written) == count and written[0].shape == (size[1], size[0], 3)
    lines = records(tmp_path / "large.jsonl")
    defect = [(line, frame) for line, frame in zip(lines, frames, strict=True) if frame.kind != "ok"]
    labelled = sum(line["label"] == frame.kind for line, frame in defect)
    tracked = sum(scenes.within_a_cell(frame.mask, (0, 0, *size), GRID, line["peak"]) for line, frame in defect)
    assert labelled >= TRACKING_TARGET * len(defect) and tracked >= TRACKING_TARGET * len(defect), (labelled, tracked)


def write_mjpeg(images: list[np.ndarray], path: Path, fps: int) -> None:
    """RGB frames as full-range 4:4:4 Motion JPEG (yuvj444p: a camera's format, not H.264's limited-range 4:2:0)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=Fraction(fps))
        height, width = images[0].shape[:2]
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj444p"
        stream.options = {"q:v": "2"}
        for index, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_an_odd_sized_full_range_mjpeg_video_keeps_its_frames_colours_and_defects(server, tmp_path):
    """Odd sides, full-range 4:4:4 MJPEG: every frame is written (an odd last row and column left off), the plain
    frames keep their colours, and the explained ones find the defect as the H.264 video's do."""
    size, count = (255, 191), 24
    frames = scenes.footage(SEED, size, count)
    video = tmp_path / "camera.avi"
    write_mjpeg([frame.image for frame in frames], video, FPS)
    out = tmp_path / "camera.explained.mp4"
    server_args = ["--url", server.url(), "--management-url", server.url("management")]
    assert run_cli(str(video), "--out", str(out), "--fps", "5", "--between", "plain", *server_args) == 0
    written, rate = decoded(out)
    assert len(written) == count and rate == FPS
    assert all(frame.shape == (size[1] - 1, size[0] - 1, 3) for frame in written)
    source, _ = decoded(video)
    plain_frames = [i for i in range(count) if i % 2]
    drift = [np.abs(written[i].astype(float) - source[i][:-1, :-1]).mean() for i in plain_frames]
    assert max(drift) < 3, drift  # read as limited range, these colours would be off by up to 32 levels
    lines = records(out.with_suffix(".jsonl"))
    assert [line["frame"] for line in lines] == list(range(0, count, 2))
    defect = [(line, frames[line["frame"]]) for line in lines if frames[line["frame"]].kind != "ok"]
    labelled = sum(line["label"] == frame.kind for line, frame in defect)
    tracked = sum(scenes.within_a_cell(frame.mask, (0, 0, *size), GRID, line["peak"]) for line, frame in defect)
    assert labelled >= TRACKING_TARGET * len(defect) and tracked >= TRACKING_TARGET * len(defect), (labelled, tracked)


def test_ctrl_c_leaves_a_playable_partial_video(server, tmp_path):
    """SIGINT in the middle: exit 130, and the frames written so far decode."""
    frames = scenes.footage(SEED, SIZE, 600)
    video = tmp_path / "long.mp4"
    scenes.write_video([frame.image for frame in frames], video, FPS)
    out = tmp_path / "partial.mp4"
    command = [sys.executable, "-m", "handlers.client", "video", str(video), "--out", str(out), "--progress"]
    command += ["--url", server.url(), "--management-url", server.url("management"), "--concurrency", "2"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        lines = out.with_suffix(".jsonl")
        while not (lines.exists() and lines.read_text().count("\n") >= 30):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "frames/s" in stderr
    written, rate = decoded(out)
    assert 30 <= len(written) < 600 and rate == FPS
