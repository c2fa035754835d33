"""``torchserve-gradcam video IN --out OUT.mp4``: an explained video and one JSON line per explained frame.

Any video FFmpeg reads (through PyAV, the ``video`` extra) goes in; OUT gets every frame with
its map drawn over it at the frame's own size (``--on original``), H.264 at the source's frame
rate, and OUT with the suffix ``.jsonl`` (or ``--records``) the records (see ``video.py``).
Exit status: 0 every explained frame answered, 1 some frame failed (the others are written) or
the server or video can't be read, 2 usage error, 130 interrupted (the video written so far plays).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

import av

from ..memory import reuse_freed_buffers
from .api import ApiError, ExplainClient, read_key_file
from .cli import (
    INTERRUPTED,
    ORIGINAL_ALPHA,
    OneLineParser,
    add_method_arguments,
    add_server_arguments,
    fraction,
    method_options,
    model_description,
    positive,
    server_and_model,
    split_targets,
)
from .methods import check_request
from .pipeline import Request
from .report import BAR_WIDTH
from .video import BETWEEN, CODEC, FRAME_FORMATS, Tally, VideoExplainer, VideoSettings, stop_on_sigint

PROG = "torchserve-gradcam video"


def _rate(text: str) -> float:
    """An argparse type: frames per second, > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of frames per second, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value:g}")
    return value


def parser() -> argparse.ArgumentParser:
    """The video command line: input, outputs, sampling, drawing, and the image client's server and method options."""
    cli = OneLineParser(
        prog=PROG,
        description="Explain a video: every frame (or --fps N a second) is sent to TorchServe, concurrently so it "
        "batches them; writes the video with each map drawn over its frame, and one JSON line per explained frame.",
    )
    cli.add_argument("source", type=Path, metavar="IN", help="a video file FFmpeg can read (mp4, mkv, avi, mov, ...)")
    cli.add_argument("--out", type=Path, required=True, help="the explained video to write (H.264, e.g. out.mp4)")
    cli.add_argument("--records", type=Path, help="JSON lines, one per explained frame (default: --out as .jsonl)")
    cli.add_argument(
        "--fps", type=_rate, help="explain at most this many frames a second (default: every frame of the source)"
    )
    cli.add_argument(
        "--between",
        choices=BETWEEN,
        default="hold",
        help="with --fps below the source's rate, frames between explained ones show the last map over their own "
        "pixels (hold) or are written without one (plain); default %(default)s",
    )
    add_server_arguments(cli)
    add_method_arguments(cli, "the one class to explain on every frame (default: each frame's top prediction)")
    cli.add_argument("--alpha", type=fraction, default=ORIGINAL_ALPHA, help="opacity of the map (default %(default)s)")
    cli.add_argument(
        "--frame-format",
        choices=tuple(FRAME_FORMATS),
        default="jpeg",
        help="how frames are sent: jpeg (quality 95; small, and the server decodes large frames at a reduced scale) "
        "or png (lossless); default %(default)s",
    )
    cli.add_argument(
        "--concurrency",
        type=positive,
        default=VideoSettings.concurrency,
        help="frames in flight at once (default %(default)s: two batches of 8, one queued while the other runs)",
    )
    cli.add_argument(
        "--codec", type=video_encoder, default=CODEC, help="FFmpeg video encoder of the output (default %(default)s)"
    )
    cli.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="a progress line on stderr (default: when stderr is a terminal)",
    )
    cli.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return cli


class FrameProgress:
    """``[####----] 24/48 frames, 1 failed, 9.5 frames/s`` redrawn on one line (no bar when the length is unknown)."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.started = time.monotonic()
        self.drawn = False

    def update(self, tally: Tally, total: int | None) -> None:
        """Redraw the line for the frames written or dropped so far."""
        if not self.enabled:
            return
        done = tally.written + tally.failed
        rate = done / max(time.monotonic() - self.started, 1e-9)
        failed = f", {tally.failed} failed" if tally.failed else ""
        if total:
            filled = BAR_WIDTH * min(done, total) // total
            bar = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{total} frames"
        else:
            bar = f"{done} frames"
        self.stream.write(f"\r{bar}{failed}, {rate:.1f} frames/s")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """End the line so the next output starts on a fresh one."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def video_encoder(name: str) -> str:
    """``--codec``: the name of a video encoder this FFmpeg has (checked before any frame is decoded)."""
    try:
        codec = av.codec.Codec(name, "w")
    except ValueError:  # UnknownCodecError
        raise argparse.ArgumentTypeError(f"FFmpeg has no encoder {name!r} (e.g. {CODEC}, libx265, mpeg4)") from None
    if codec.type != "video":
        raise argparse.ArgumentTypeError(f"{name!r} encodes {codec.type}, not video (e.g. {CODEC})")
    return name


def _settings(cli: argparse.ArgumentParser, args: argparse.Namespace, url: str, model: str) -> VideoSettings:
    """The request and drawing settings, checked against the model's description (usage errors exit 2)."""
    targets = split_targets(args.target)
    if len(targets) > 1:
        cli.error(f"give one --target for a video (one map per frame), got {', '.join(targets)}")
    if args.method == "none":
        cli.error("--method none answers without a map, so there is nothing to draw on the video; choose a method")
    options = method_options(args)
    description = model_description(args, url, model)
    problem = check_request(description, args.method, targets, options)
    if problem:
        cli.error(problem)
    if args.method == "activations" and not {"channel", "channels"} & set(options):
        options["channels"] = "1"  # one map per frame: the most activated channel
    request = Request(args.method, targets, None, "grid", options)
    size = description.details.get("input_size")
    model_input = (int(size[0]), int(size[1])) if isinstance(size, list) and len(size) == 2 else None
    return VideoSettings(
        request, args.alpha, args.fps, args.between, args.frame_format, args.concurrency, args.codec, model_input
    )


def _summary(tally: Tally, seconds: float, out: Path, records: Path) -> str:
    rate = (tally.written + tally.failed) / max(seconds, 1e-9)
    ended = " (interrupted)" if tally.interrupted else ""
    return (
        f"{tally.decoded} frame(s) decoded{ended}: {tally.explained} explained, {tally.failed} failed, "
        f"{tally.written - tally.explained} written between explained ones; {rate:.1f} frames/s; "
        f"video {out}, records {records}"
    )


def run(cli: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Check the arguments, explain the video, print the summary; returns the exit status."""
    try:
        url, model = server_and_model(args.url, args.model)
        token = read_key_file(args.key_file) if args.key_file else args.token
    except ValueError as error:
        cli.error(str(error))
    if not args.source.is_file():
        cli.error(f"no such video file: {args.source}")
    settings = _settings(cli, args, url, model)
    records_path = args.records or args.out.with_suffix(".jsonl")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        records = records_path.open("w", encoding="utf-8")
    except OSError as error:
        cli.error(f"cannot write {error.filename or records_path}: {error.strerror or error}")
    reuse_freed_buffers()
    client = ExplainClient(url, model, token, args.timeout)
    progress = FrameProgress(sys.stderr, sys.stderr.isatty() if args.progress is None else args.progress)
    explainer = VideoExplainer(client, settings)
    started = time.monotonic()
    try:
        with stop_on_sigint(explainer.stop):
            tally = explainer.run(args.source, args.out, records, progress.update)
    except KeyboardInterrupt:
        progress.close()
        written = explainer.tally.written
        sys.stderr.write(f"{PROG}: interrupted; {written} frame(s) written to {args.out}, which plays\n")
        return INTERRUPTED
    except ApiError as error:
        progress.close()
        sys.stderr.write(f"{PROG}: {error}\n")
        return 1
    except (av.error.FFmpegError, OSError, ValueError) as error:
        progress.close()
        sys.stderr.write(f"{PROG}: cannot read or write the video ({args.source} -> {args.out}): {error}\n")
        return 1
    finally:
        records.close()
        client.close()
    progress.close()
    for message, count in tally.errors.items():
        sys.stderr.write(f"{PROG}: {count} frame(s) failed and were left out: {message}\n")
    print(_summary(tally, time.monotonic() - started, args.out, records_path))
    return 1 if tally.failed else 0


def main(argv: list[str]) -> int:
    """``torchserve-gradcam video ...``; returns the exit status."""
    cli = parser()
    args = cli.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return run(cli, args)
