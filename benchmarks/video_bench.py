"""Explained video end to end (section 12): the video client's frames/s against the server's images/s.

A generated production-line video (``handlers.inspection.scenes.footage``, H.264) goes through
the client's video command code (``VideoExplainer``: PyAV decoding, frames sent as JPEG at
concurrency 8, maps drawn over the frames, H.264 written); in alternating windows the
closed-loop load generator sends the same frames, encoded as the client sends them, as
single-image requests at the same concurrency. The ratio is the video's frames/s over the
single images' requests/s. The client runs on the same machine as the server, so its own CPU
(reported per frame) is taken from the server's: on a machine with few cores that, not the
batching, is what the ratio measures. So each size is measured twice: all processes on all
cores, and with the cores split (the server's threads on one half, the client, or the load
generator, on the other), as when the client has a machine of its own.

The two sides do different work per frame, and the ratio charges the difference to the video,
as a user would see it: the load generator posts JPEGs encoded before the window and reads no
answer, the client decodes the H.264 input, converts each frame to RGB and encodes it as JPEG,
parses the answer, draws the map at the frame's size on its decoded yuv420p planes and encodes
H.264 (preset ultrafast). Neither sends frames shrunk at these sizes (the client would from twice
the model's input on both axes, as the server decodes).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from PIL import Image

from handlers.client.api import ExplainClient, fetch_description
from handlers.client.pipeline import Request
from handlers.client.video import VideoExplainer, VideoSettings, encode_frame
from handlers.inspection import scenes
from handlers.memory import reuse_freed_buffers
from handlers.testing.torchserve import TorchServe

from .artifacts import build_ours
from .load import Shot, run_window
from .monitor import ForeignLoad
from .report import Section, Target, table
from .server import BenchServer
from .settings import Settings

GOAL = 0.9  # video frames/s over single-image requests/s
# Two of the MAR's batches of 8 in flight, for the video and the single images alike: the server has the next batch
# queued while it runs one (at 8 it idled between batches: single images 441-454 req/s, 585-672 at 16, split cores)
CONCURRENCY = 16
FPS = 25
SEED = 2026


@dataclass(frozen=True)
class Clip:
    """One size of the test video: its file and its frames as the client sends them."""

    size: tuple[int, int]
    video: Path
    frames: tuple[bytes, ...]


@dataclass
class Measured:
    """Alternating windows of one clip: single-image requests/s, video frames/s, client CPU per frame."""

    singles: list[float]
    videos: list[float]
    client_cpu_ms: list[float]
    errors: int = 0

    def ratios(self) -> list[float]:
        return [video / single for video, single in zip(self.videos, self.singles, strict=True) if single > 0]


def _pin(pid: int, cores: set[int]) -> None:
    """Every thread of process ``pid`` onto ``cores`` (affinity is per thread on Linux)."""
    for thread in psutil.Process(pid).threads():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(thread.id, cores)


@contextlib.contextmanager
def split_cores(server: TorchServe) -> Iterator[bool]:
    """While inside: the server's processes on the first half of the cores, this thread (and the threads it
    starts: the client's, the load generator's) on the other half. Yields False with fewer than 2 cores."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or server.process is None:
        yield False
        return
    half = len(cores) // 2
    processes = [server.process.pid, *(child.pid for child in psutil.Process(server.process.pid).children(True))]
    try:
        for pid in processes:
            _pin(pid, set(cores[:half]))
        os.sched_setaffinity(0, set(cores[half:]))
        yield True
    finally:
        os.sched_setaffinity(0, set(cores))
        for pid in processes:
            with contextlib.suppress(psutil.Error):
                _pin(pid, set(cores))


def clip(folder: Path, size: tuple[int, int], frames: int) -> Clip:
    """The footage at ``size``, written as H.264, and each frame as the JPEG the client would send."""
    footage = scenes.footage(SEED, size, frames)
    video = folder / f"line_{size[0]}x{size[1]}.mp4"
    scenes.write_video([frame.image for frame in footage], video, FPS, crf=18)
    return Clip(size, video, tuple(encode_frame(Image.fromarray(frame.image), "jpeg") for frame in footage))


def model_input(server: TorchServe) -> tuple[int, int]:
    """The served model's input (height, width) from its description, as the video command reads it."""
    height, width = fetch_description(server.url("management"), "inspection")["input_size"]
    return int(height), int(width)


def explain_video(server: TorchServe, source: Clip, out: Path) -> tuple[float, float, int]:
    """One run of the video client over the clip: (frames/s, client CPU ms per frame, failed frames)."""
    reuse_freed_buffers()  # as the video command does
    client = ExplainClient(server.url(), "inspection")
    settings = VideoSettings(Request(format="grid"), concurrency=CONCURRENCY, model_input=model_input(server))
    explainer = VideoExplainer(client, settings)
    started, cpu = time.monotonic(), time.process_time()
    with (out.with_suffix(".jsonl")).open("w") as records:
        tally = explainer.run(source.video, out, records, lambda *_: None)
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    client.close()
    done = tally.written + tally.failed
    return done / elapsed, cpu / max(done, 1) * 1e3, tally.failed


def measure(server: TorchServe, source: Clip, settings: Settings, rounds: int, workdir: Path) -> Measured:
    """Warm-up, then ``rounds`` of a single-image window and a video run, in alternating order."""
    url = f"{server.url()}/predictions/inspection"
    shots = [Shot(url, frame, {"X-Explain-Format": "grid"}) for frame in source.frames]
    most = settings.max_requests_per_window
    run_window(shots, CONCURRENCY, settings.warmup_window_s, max_requests=most)
    explain_video(server, source, workdir / "warmup.mp4")
    measured = Measured([], [], [])
    for r in range(rounds):
        steps = ["single", "video"] if r % 2 == 0 else ["video", "single"]
        for step in steps:
            if step == "single":
                window = run_window(shots, CONCURRENCY, settings.window_s, max_requests=most)
                measured.singles.append(window.rps)
                measured.errors += window.errors
            else:
                rate, cpu_ms, failed = explain_video(server, source, workdir / f"round{r}.mp4")
                measured.videos.append(rate)
                measured.client_cpu_ms.append(cpu_ms)
                measured.errors += failed
    return measured


def run(settings: Settings, workdir: Path) -> Section:
    section = Section("12. Explained video: frames/s end to end vs single images of the same size")
    quick = settings.name == "quick"
    sizes = {(256, 192): 120 if quick else 400} | ({} if quick else {(640, 480): 200})
    rounds = 1 if quick else max(2, settings.e2e_rounds)
    folder = workdir / "video"
    store = folder / "store"
    store.mkdir(parents=True, exist_ok=True)
    mar = build_ours(store, "inspection", "video_inspection", None)
    clips = [clip(folder, size, frames) for size, frames in sizes.items()]
    rows, verdicts = [], []
    with (
        ForeignLoad() as load,
        BenchServer(store, {"inspection": mar}, folder / "server", env={"OMP_NUM_THREADS": "1"}) as server,
    ):
        for source in clips:
            for placement in ("shared", "split"):
                with split_cores(server) if placement == "split" else contextlib.nullcontext(True) as placed:
                    if not placed:
                        continue
                    measured = measure(server, source, settings, rounds, folder)
                ratios = measured.ratios()
                best = max(measured.videos) / max(measured.singles)
                label = f"{source.size[0]}x{source.size[1]}, cores {placement}"
                rows.append(
                    [
                        label,
                        f"{len(source.frames)}",
                        f"{statistics.median(measured.singles):.1f}",
                        f"{statistics.median(measured.videos):.1f}",
                        f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}–{max(ratios):.2f})",
                        f"{best:.2f}x",
                        f"{statistics.median(measured.client_cpu_ms):.1f}",
                        str(measured.errors),
                    ]
                )
                verdicts.append((label, statistics.median(ratios)))
    summary = load.summary()
    section.add(
        f"The generated line video ({FPS} frames/s, H.264) explained by the client's video code (Grad-CAM, "
        f"frames as JPEG quality 95, concurrency {CONCURRENCY}, every frame drawn and written as H.264 at "
        f"preset ultrafast), against the same frames, JPEG-encoded beforehand, sent as single-image requests "
        f"by the load generator at the same concurrency (it decodes, draws and encodes nothing), in "
        f"alternating windows ({rounds} round(s) per size; one server, batchSize 8, one worker, "
        f"OMP_NUM_THREADS=1). Client and server share this machine: the client's CPU per frame is taken "
        f"from the server when the cores are shared; 'split' puts the server on half the cores and the client "
        f"(or load generator) on the other half. During this section {summary.describe()}.",
        table(
            [
                "frame size, cores",
                "frames",
                "single images req/s",
                "video frames/s",
                "ratio per round",
                "best/best",
                "client CPU ms/frame",
                "errors",
            ],
            rows,
        ),
    )
    for label, ratio in verdicts:
        section.targets.append(
            Target(
                f"explained video {label}: frames/s vs single images/s",
                f"≥ {GOAL:.1f}x",
                f"{ratio:.2f}x",
                ratio >= GOAL,
                summary.disturbed,
            )
        )
    return section
