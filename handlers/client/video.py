"""Explain a video frame by frame: decode (PyAV), send frames concurrently, write the overlay video and JSON lines.

Frames are decoded in order and the ones to explain (every frame, or ``fps`` of them a second)
are sent ``concurrency`` at a time (by default two of TorchServe's batches, so the server has the next
batch queued while it runs one), so TorchServe batches them; as many more wait encoded, so an
answer lets the next frame go at once (the server's next batch fills without waiting for the
client). A frame with at least twice the pixels per model input pixel that the server decodes
at (the first answer's geometry tells) is sent shrunk by a whole factor, as the server would
decode it; the sent picture is made from the decoded frame by one FFmpeg pass (scale and convert
to RGB at once). Each answer's map is drawn over its frame at the frame's own size (``--on
original``: bicubic into the box the model saw) straight onto the decoded yuv420p planes, the
encoder's own format (``drawing.py``: no RGB picture of the full frame is ever made), by the
thread that sent it, after the answer (so the next frame has gone already); the decoding thread
only decodes, hands out and encodes H.264. The overlay video is written in frame order at the
source's frame times (a variable frame rate included); a frame between explained ones (``fps``
below the source's) shows the last map over its own pixels (``between="hold"``) or is written
plain (``"plain"``). A frame whose request fails is reported and left out (its time slot stays:
the picture before it stays on screen), the rest is written. Whatever ends the run (the last
frame, an error, Ctrl-C), the video is finished and closed, so it plays.

One JSON line per explained frame: ``frame``, ``time`` (seconds), ``label``/``probability`` of
the top prediction, ``target`` (the explained class; null for class-agnostic methods),
``method``, ``peak`` ([x, y] of the hottest map cell's centre in the frame's pixels; null for
an all-zero map); a failed frame has ``error`` instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, VideoReformatter
from PIL import Image

from ..render.original import Box, peak
from .api import ApiError, ExplainClient, ServerUnreachable
from .drawing import FrameDrawer, Planes
from .original import heatmap_of, placed_box
from .pipeline import Request

logger = logging.getLogger(__name__)

CODEC = "libx264"
CRF = "18"  # x264 quality: visually lossless for overlays
PRESET = "ultrafast"  # a third of veryfast's CPU per frame (640x480: 2.2 against 6.8 ms), for about twice the bytes
FRAME_FORMATS = {"jpeg": ("JPEG", {"quality": 95}), "png": ("PNG", {"compress_level": 1})}
BETWEEN = ("hold", "plain")
PEAK_DECIMALS = 1
WINDOW_PER_REQUEST = 2  # frames decoded ahead per request in flight: the pool never waits for the decoder
SEND_MARGIN = 2  # frames go out with at least this many pixels per model input pixel (the server decodes so too)
BT601 = {2, 5, 6}  # FFmpeg's colour spaces (AVColorSpace) that are BT.601's matrix: unspecified, BT470BG, SMPTE170M
READY_PER_REQUEST = 1  # frames encoded and waiting to be sent, per request in flight: an answer frees a send at once


@dataclass(frozen=True)
class VideoSettings:
    """How to explain a video: the request, opacity, frame sampling and what the frames are sent as."""

    request: Request
    alpha: float = 0.5
    fps: float | None = None  # explain at most this many frames a second (None: every frame)
    between: str = "hold"  # frames not explained: "hold" the last map, or "plain"
    frame_format: str = "jpeg"
    concurrency: int = 16  # two batches of the default MAR's 8: one queued while the other runs
    codec: str = CODEC
    model_input: tuple[int, int] | None = None  # (height, width) from the model's description: large frames go shrunk


@dataclass
class Outcome:
    """One explained frame: its JSON record, the map and where it goes, and the drawn frame (None when it failed)."""

    record: dict[str, Any]
    heatmap: np.ndarray | None = None
    box: Box | None = None
    drawn: av.VideoFrame | None = None  # ready for the encoder


@dataclass
class Tally:
    """What a run did, for the summary line and the exit status."""

    decoded: int = 0
    explained: int = 0
    failed: int = 0
    written: int = 0
    interrupted: bool = False
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class _Slot:
    """A decoded frame waiting for its turn to be written (and for its answer, if it is explained)."""

    index: int
    time: float
    frame: av.VideoFrame  # as decoded
    answer: Future[Outcome] | None


class Schedule:
    """Which frames to explain: every one, or the first frame at or after each multiple of 1/fps seconds."""

    def __init__(self, fps: float | None) -> None:
        self.period = 0.0 if fps is None else 1.0 / fps
        self.due = 0.0

    def take(self, time: float) -> bool:
        """Whether the frame at ``time`` seconds is explained."""
        if time + 1e-6 < self.due:
            return False
        self.due = max(self.due + self.period, time) if self.period else time
        return True


TIME_BASE = Fraction(1, 90_000)  # of the output's timestamps: MPEG's clock, fine enough for any source's times


class VideoWriter:
    """H.264 in the output container, each frame at its source frame's time (from the first one's, in 1/90,000 s),
    so a variable frame rate, and the gap a left-out frame leaves, keep time; ``rate`` is the nominal one.

    yuv420p needs even sides: an odd last row or column is left off (``planes_of``).
    """

    def __init__(self, path: Path, rate: Fraction, size: tuple[int, int], codec: str) -> None:
        self.size = _even(size)
        self.container = av.open(str(path), "w")
        stream = self.container.add_stream(codec, rate=rate)
        if not isinstance(stream, av.VideoStream):
            self.container.close()
            raise ValueError(f"codec {codec!r} is not a video encoder")
        self.stream = stream
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = "yuv420p"
        if codec == CODEC:
            self.stream.options = {"crf": CRF, "preset": PRESET}
        self.stream.codec_context.time_base = TIME_BASE
        self.start: float | None = None  # the first frame's source time: the output's zero
        self.last_pts = -1

    def write(self, frame: av.VideoFrame, time: float) -> None:
        """Encode one yuv420p frame of ``size`` (``blank``'s) shown at source ``time`` (s, after every frame before)."""
        if self.start is None:
            self.start = time
        frame.pts = max(round((time - self.start) / TIME_BASE), self.last_pts + 1)
        frame.time_base = TIME_BASE
        self.container.mux(self.stream.encode(frame))
        self.last_pts = frame.pts

    def close(self) -> None:
        """Flush the encoder and write the container's index: the file plays from here on."""
        try:
            self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()


def _even(size: tuple[int, int]) -> tuple[int, int]:
    return (size[0] - size[0] % 2, size[1] - size[1] % 2)


def yuv420p(frame: av.VideoFrame) -> av.VideoFrame:
    """A decoded frame as the encoder and the drawer take it: yuv420p, limited range, BT.601 (the output's
    untagged convention, as when frames went through RGB); itself when it is one (the usual H.264 input)."""
    full = frame.color_range == ColorRange.JPEG or frame.format.name.startswith("yuvj")
    if frame.format.name == "yuv420p" and not full and frame.colorspace in BT601:
        return frame
    return frame.reformat(
        format="yuv420p",
        src_color_range=ColorRange.JPEG if full else None,
        dst_colorspace=Colorspace.ITU601,
        dst_color_range=ColorRange.MPEG,
        threads=1,
    )


def planes_of(frame: av.VideoFrame) -> Planes:
    """Y, U, V of a yuv420p frame as arrays (views of its buffers, writable), an odd last row or column left off:
    the encoder takes even sides only."""
    width, height = _even((frame.width, frame.height))
    views = []
    for plane, (columns, rows) in zip(
        frame.planes, ((width, height), (width // 2, height // 2), (width // 2, height // 2)), strict=True
    ):
        samples = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(-1, plane.line_size)
        views.append(samples[:rows, :columns])
    return views[0], views[1], views[2]


def blank(size: tuple[int, int]) -> tuple[av.VideoFrame, Planes]:
    """A new yuv420p frame of ``size`` (even sides) for the encoder, and its planes to write."""
    frame = av.VideoFrame(size[0], size[1], "yuv420p")
    return frame, planes_of(frame)


def plain(frame: av.VideoFrame) -> av.VideoFrame:
    """A decoded yuv420p frame copied as the encoder takes it (its own frame: the decoder keeps its buffers)."""
    source = planes_of(frame)
    copy, target = blank((source[0].shape[1], source[0].shape[0]))
    for into, plane in zip(target, source, strict=True):
        into[...] = plane
    return copy


_converters = threading.local()  # each thread's own FFmpeg scaler: made once, not per frame (a third of the cost);
# on one thread (FFmpeg's own threads for a frame this size cost more CPU than they save)


def sent_picture(frame: av.VideoFrame, factor: int) -> Image.Image:
    """The RGB picture sent for a decoded frame: scaled (area average) to ``sent_size`` and converted in one pass."""
    converter = getattr(_converters, "reformatter", None)
    if converter is None:
        converter = _converters.reformatter = VideoReformatter()
    width, height = sent_size((frame.width, frame.height), factor)
    rgb = converter.reformat(frame, width, height, "rgb24", interpolation="AREA" if factor > 1 else None, threads=1)
    plane = rgb.planes[0]
    samples = np.frombuffer(memoryview(plane), dtype=np.uint8)  # no copy: the picture keeps the frame's buffer
    return Image.frombuffer("RGB", (width, height), samples, "raw", "RGB", plane.line_size, 1)


def encode_frame(picture: Image.Image, frame_format: str) -> bytes:
    """One frame as the image file sent to the server."""
    fmt, options = FRAME_FORMATS[frame_format]
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def reduction(box: Box, model_input: tuple[int, int]) -> int:
    """The largest whole factor a frame can be shrunk by before it is sent that still leaves ``SEND_MARGIN``
    frame pixels per model input pixel on both axes, given the ``box`` of the frame the model sees.

    The server itself decodes large images reduced by this rule (``Preprocessor.decode_size``), so the
    model sees what it would see of the full frame, and the client encodes and sends a fraction of the pixels.
    """
    height, width = model_input
    per_pixel = min((float(box[2]) - float(box[0])) / width, (float(box[3]) - float(box[1])) / height)
    return max(1, int(per_pixel // SEND_MARGIN))


def sent_size(size: tuple[int, int], factor: int) -> tuple[int, int]:
    """A frame's (width, height) shrunk by ``factor``: round(size / factor), so the whole frame stays mapped onto
    the whole sent picture and the answer's geometry scales back exactly (``placed_box``)."""
    if factor == 1:
        return size
    return (max(1, round(size[0] / factor)), max(1, round(size[1] / factor)))


def _record(index: int, time: float, answer: dict[str, Any], entry: dict[str, Any], spot: Any) -> dict[str, Any]:
    top = answer["predictions"][0]
    target = entry.get("target")
    return {
        "frame": index,
        "time": round(time, 4),
        "label": top["label"],
        "probability": top["probability"],
        "target": None if not target else target["label"],
        "method": entry.get("method"),
        "peak": None if spot is None else [round(spot[0], PEAK_DECIMALS), round(spot[1], PEAK_DECIMALS)],
    }


class VideoExplainer:
    """Explains the frames of one video and writes the overlay video and the records."""

    def __init__(self, client: ExplainClient, settings: VideoSettings) -> None:
        self.client = client
        self.settings = settings
        self.fields = settings.request.fields()
        self.drawer = FrameDrawer(settings.alpha)
        self.in_flight = threading.BoundedSemaphore(settings.concurrency)  # requests sent and not yet answered
        self.reduction: int | None = None  # frames are sent shrunk by this factor, once an answer has told it
        self.tally = Tally()  # of the current or last run: what was written before an interruption
        self.stop = threading.Event()  # set (e.g. by Ctrl-C, see stop_on_sigint): end after the frame being written

    def explain_frame(self, decoded: av.VideoFrame, index: int, time: float) -> Outcome:
        """Send one frame, draw its first map over it; a request that fails becomes the record's ``error``.

        Only the request counts against ``concurrency``: encoding before it and drawing after it leave the
        server's next frame free to go. ServerUnreachable and a 400 (a bad option: the frames themselves are
        valid JPEGs) are raised: every later frame would fail the same way.
        """
        try:
            data = encode_frame(sent_picture(decoded, self.reduction or 1), self.settings.frame_format)
            with self.in_flight:
                answer = self.client.explain_raw(data, self.fields)
            entries = answer.get("explanations") or []
            if not entries:
                raise ApiError("the answer has no explanation to draw")
            heatmap = heatmap_of(entries[0])
            box = placed_box(answer, (decoded.width, decoded.height))  # in the frame's pixels, whatever size it went at
            if self.reduction is None and self.settings.model_input is not None:
                self.reduction = reduction(box, self.settings.model_input)
            spot = peak(heatmap, box) if heatmap.max() > 0 else None
            drawn = self.overlay(decoded, heatmap, box)
            return Outcome(_record(index, time, answer, entries[0], spot), heatmap, box, drawn)
        except ServerUnreachable:
            raise
        except ApiError as error:
            if error.status == 400:  # the request's options or answer, not this frame (a valid JPEG): all would fail
                raise ApiError(f"{error.args[0]} (refused for this frame, so for every frame: stopped)", 400) from None
            return Outcome({"frame": index, "time": round(time, 4), "error": str(error)})
        except (KeyError, IndexError, TypeError, ValueError) as error:
            message = f"unexpected answer from the server ({type(error).__name__}: {error})"
            return Outcome({"frame": index, "time": round(time, 4), "error": message})

    def overlay(self, decoded: av.VideoFrame, heatmap: np.ndarray, box: Box) -> av.VideoFrame:
        """The map drawn over a decoded frame, on its yuv420p planes, as a new frame for the encoder."""
        source = planes_of(yuv420p(decoded))
        frame, target = blank((source[0].shape[1], source[0].shape[0]))
        self.drawer.draw((decoded.width, decoded.height), source, heatmap, box, target)
        return frame

    def run(self, source: Path, out: Path, records: TextIO, on_frame: Callable[[Tally, int | None], None]) -> Tally:
        """Explain ``source`` into ``out`` (and ``records``); ``on_frame`` sees the tally after each written slot.

        ``stop`` set, or Ctrl-C (KeyboardInterrupt) and any error, still finish and close the video; the run then
        raises KeyboardInterrupt (for ``stop``) or the error.
        Raises ServerUnreachable, ValueError (no video stream) and PyAV's errors (unreadable input).
        """
        tally = self.tally = Tally()
        settings = self.settings
        pool = ThreadPoolExecutor((1 + READY_PER_REQUEST) * settings.concurrency, thread_name_prefix="frame")
        writer: VideoWriter | None = None
        held: Outcome | None = None
        try:
            with av.open(str(source)) as container:
                if not container.streams.video:
                    raise ValueError(f"{source} has no video stream")
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                rate = stream.average_rate or stream.guessed_rate or Fraction(25)
                total = stream.frames or None
                schedule = Schedule(settings.fps)
                pending: deque[_Slot] = deque()
                for index, (time, frame) in enumerate(_frames(container, stream, rate)):
                    self._check_stop()
                    tally.decoded += 1
                    if writer is None:
                        writer = VideoWriter(out, rate, (frame.width, frame.height), settings.codec)
                    answer = pool.submit(self.explain_frame, frame, index, time) if schedule.take(time) else None
                    pending.append(_Slot(index, time, frame, answer))
                    while len(pending) > WINDOW_PER_REQUEST * settings.concurrency:
                        held = self._write(pending.popleft(), writer, records, tally, held)
                        on_frame(tally, total)
                        self._check_stop()
                while pending:
                    assert writer is not None
                    self._check_stop()
                    held = self._write(pending.popleft(), writer, records, tally, held)
                    on_frame(tally, total)
        except KeyboardInterrupt:
            tally.interrupted = True
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            if writer is not None:
                writer.close()
        return tally

    def _check_stop(self) -> None:
        """Raise KeyboardInterrupt once ``stop`` is set: between frames, so the file ends on a whole frame."""
        if self.stop.is_set():
            raise KeyboardInterrupt("stop requested")

    def _write(
        self, slot: _Slot, writer: VideoWriter, records: TextIO, tally: Tally, held: Outcome | None
    ) -> Outcome | None:
        """Write one frame in order: its overlay, the held map over it, itself, or nothing when it failed."""
        if slot.answer is None:
            if self.settings.between == "hold" and held is not None and held.heatmap is not None:
                assert held.box is not None
                frame = self.overlay(slot.frame, held.heatmap, held.box)
            else:
                frame = plain(yuv420p(slot.frame))
            writer.write(frame, slot.time)
            tally.written += 1
            return held
        outcome = slot.answer.result()
        if outcome.drawn is not None:
            writer.write(outcome.drawn, slot.time)
        records.write(json.dumps(outcome.record, separators=(",", ":")) + "\n")
        records.flush()
        if outcome.drawn is None:
            tally.failed += 1
            error = str(outcome.record["error"])
            tally.errors[error] = tally.errors.get(error, 0) + 1
            logger.warning("frame %d (%.3f s) failed and is left out: %s", slot.index, slot.time, error)
            return held
        tally.explained += 1
        tally.written += 1
        return outcome


@contextlib.contextmanager
def stop_on_sigint(stop: threading.Event) -> Iterator[None]:
    """While inside (main thread only): the first Ctrl-C sets ``stop`` (the run ends after a whole frame and
    closes the video); a second one interrupts at once, as Python's default does."""

    def first(signum: int, frame: Any) -> None:
        stop.set()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def upright(frame: av.VideoFrame) -> av.VideoFrame:
    """The frame as players show it: a phone video's display rotation (FFmpeg's display matrix side data,
    counterclockwise degrees) applied, as FFmpeg's autorotate does; itself when it has none. The model then sees
    the scene upright (as ``decode`` turns photos by their EXIF orientation) and the output needs no rotation."""
    turns = round(frame.rotation / 90) % 4
    if not turns:
        return frame
    source = planes_of(yuv420p(frame))
    height, width = source[0].shape
    turned, target = blank((height, width) if turns % 2 else (width, height))
    for into, plane in zip(target, source, strict=True):
        into[...] = np.rot90(plane, turns)
    return turned


def _frames(container: Any, stream: Any, rate: Fraction) -> Iterator[tuple[float, av.VideoFrame]]:
    """(time in seconds, upright frame) of every decoded frame, in order."""
    for count, frame in enumerate(container.decode(stream)):
        time = float(frame.time) if frame.time is not None else count / float(rate)
        yield time, upright(frame)
