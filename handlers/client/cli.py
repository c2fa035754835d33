"""``torchserve-gradcam`` / ``python -m handlers.client``: explain images with a running TorchServe.

For every image: one PNG per explanation (``<stem>.<method>.<label>.png`` for a class,
``<stem>.activations.<layer>.ch<N>.png`` or ``.tiles.png`` for layer channels,
``<stem>.<method>.png`` for a class-agnostic map), ``<stem>.json`` (its answer, pictures as
file names) and with ``--sheet`` a ``<stem>.sheet.png`` (input | probabilities | Grad-CAM |
Guided Grad-CAM, a row per class). ``--describe`` prints what the model offers instead.
Method and options are checked first against the model's description (management API), or
the engine's registry when that can't be read. Requests go out ``--concurrency`` at a time
so the server can batch them. Exit status: 0 all explained, 1 some image failed (the others
are still done) or the server is unreachable, 2 usage error, 130 interrupted (Ctrl-C).
Every expected error is one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import queue
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from .api import ApiError, ExplainClient, fetch_description, read_key_file
from .inputs import collect, output_stems
from .methods import (
    METHOD_OPTIONS,
    ModelDescription,
    check_faithfulness,
    check_request,
    describe,
    from_registry,
    from_server,
)
from .pipeline import Pipeline, Request, Result
from .report import Progress, summary

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "inspection"
MANAGEMENT_PORT = 8081  # TorchServe's default management port
FORMATS = ("overlay", "png", "tiles")  # the answer formats that come back as pictures
# A full inference URL pasted into --url: {base}/predictions/{model}[/{version}] (or /explanations/).
_ENDPOINT = re.compile(r"(?P<base>.*?)/(?:predictions|explanations)/(?P<model>[^/]+(?:/[^/]+)?)/?")
INTERRUPTED = 130  # the shell's status for a process ended by SIGINT
ORIGINAL_ALPHA = 0.5


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``prog: error: message`` (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        """Exit 2 with the message on one line, as argparse does but without the usage block."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


positive = at_least(1)
natural = at_least(0)


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {value:g}")
    return value


def add_server_arguments(cli: argparse.ArgumentParser) -> None:
    """Where the server is and how to reach it: --url, --model, --management-url, --token/--key-file, --timeout."""
    cli.add_argument(
        "--url",
        default="http://127.0.0.1:8080",
        help="TorchServe inference address (default %(default)s); a full .../predictions/MODEL URL names the model",
    )
    cli.add_argument("--model", help=f"model name (default: the one in --url, else {DEFAULT_MODEL})")
    cli.add_argument(
        "--management-url",
        help=f"TorchServe management address, for the model's description (default: --url's host, port "
        f"{MANAGEMENT_PORT})",
    )
    auth = cli.add_mutually_exclusive_group()
    auth.add_argument("--token", help="TorchServe inference key (token authorization on)")
    auth.add_argument("--key-file", type=Path, help="TorchServe's key_file.json: its inference key is used")
    cli.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for one answer (default %(default)s)"
    )


def method_name(text: str) -> str:
    """``--method`` as the server reads it: case and surrounding spaces do not matter (GradCAM = gradcam)."""
    return text.strip().lower()


def add_method_arguments(cli: argparse.ArgumentParser, targets_help: str) -> None:
    """What to explain: --method, its options (--layer, --window, ...) and --target."""
    cli.add_argument(
        "--method",
        type=method_name,
        default="gradcam",
        help="explanation method, one the model offers (--describe lists them; default %(default)s)",
    )
    options = cli.add_argument_group("method options (each applies to the methods that list it in --describe)")
    options.add_argument("--layer", help="activations: the layer to show (default: the target layer)")
    options.add_argument("--channel", type=natural, help="activations: this one channel")
    options.add_argument("--channels", type=positive, help="activations: the N most activated channels")
    options.add_argument("--window", type=positive, help="occlusion: side of the hidden square, in input pixels")
    options.add_argument("--stride", type=positive, help="occlusion: step between windows, in input pixels")
    options.add_argument("--steps", type=positive, help="integrated_gradients: integration steps")
    cli.add_argument("--target", action="append", default=[], metavar="LABEL|INDEX", help=targets_help)


def parser() -> argparse.ArgumentParser:
    """The command line: image paths, server, model, options and output folder."""
    cli = OneLineParser(
        prog="torchserve-gradcam",
        description="Send images to TorchServe; save the explanations as PNGs, the JSON answers and optional "
        "contact sheets. --describe prints the model's methods, labels and layers. "
        "'torchserve-gradcam video IN --out OUT.mp4' explains a video (see its --help).",
    )
    cli.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="image files and/or folders (scanned recursively)"
    )
    add_server_arguments(cli)
    cli.add_argument(
        "--describe", action="store_true", help="print the model's methods, labels, layers and limits, then exit"
    )
    add_method_arguments(cli, "class(es) to explain, repeatable or comma-separated (default: the top prediction)")
    cli.add_argument(
        "--format",
        choices=FORMATS,
        default="overlay",
        help="overlay (jet on the input), png (grayscale map) or tiles (activations: one mosaic); default %(default)s",
    )
    cli.add_argument(
        "--on",
        choices=("model", "original"),
        default="model",
        help="draw the maps on the picture the model saw (the server's overlay) or on your original picture at its "
        "own size, the part the model did not see darkened and hatched; default %(default)s",
    )
    cli.add_argument(
        "--alpha", type=fraction, help=f"--on original: opacity of the map, 0-1 (default {ORIGINAL_ALPHA})"
    )
    cli.add_argument(
        "--faithfulness",
        choices=("drop", "full"),
        help="measure each map's faithfulness to the model (score in the table and the JSON; drop: one more "
        "forward per batch, full: also deletion/insertion AUC); class-specific methods only",
    )
    cli.add_argument("--top-k", type=positive, help="predictions per image (default: the model's own)")
    cli.add_argument("--concurrency", type=positive, default=4, help="requests in flight at once (default %(default)s)")
    cli.add_argument("--out", type=Path, default=Path("explanations"), help="output folder (default ./%(default)s)")
    cli.add_argument(
        "--sheet",
        action="store_true",
        help="also write <stem>.sheet.png: input | probabilities | Grad-CAM | Guided Grad-CAM, a row per target",
    )
    cli.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return cli


def split_targets(values: list[str]) -> tuple[str, ...]:
    """``--target`` values, repeated and/or comma-separated, as one tuple."""
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


def server_and_model(url: str, model: str | None) -> tuple[str, str]:
    """The inference address and model name from ``--url``/``--model``; ValueError says what to pass."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url must be the server's inference address like http://127.0.0.1:8080, got {url!r}")
    endpoint = _ENDPOINT.fullmatch(parts.path)
    if endpoint is None:
        return url.rstrip("/"), model or DEFAULT_MODEL
    named = endpoint.group("model")
    if model and model != named:
        raise ValueError(f"--url names model {named!r} but --model says {model!r}: give the model once")
    return f"{parts.scheme}://{parts.netloc}{endpoint.group('base')}", named


def management_url(url: str, given: str | None) -> str:
    """``--management-url``, or the inference address's scheme and host on TorchServe's management port."""
    if given:
        return given.rstrip("/")
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{MANAGEMENT_PORT}"


def _management_token(args: argparse.Namespace) -> str | None:
    """The key for the management API: key_file.json's management key, else --token (which may not fit)."""
    if args.key_file:
        try:
            return read_key_file(args.key_file, "management")
        except ValueError:
            return None
    return args.token


def model_description(args: argparse.Namespace, url: str, model: str) -> ModelDescription:
    """The served model's description, or the engine's registry when the management API can't give it."""
    address = management_url(url, args.management_url)
    try:
        return from_server(fetch_description(address, model, _management_token(args), min(args.timeout, 10.0)))
    except (ApiError, KeyError, TypeError, ValueError) as error:
        logger.info("no description of %s from %s (%s): checking against the engine's registry", model, address, error)
        return from_registry()


def method_options(args: argparse.Namespace) -> dict[str, str]:
    """The method options given on the command line, as request fields."""
    return {name: str(getattr(args, name)) for name in METHOD_OPTIONS if getattr(args, name) is not None}


def _describe(args: argparse.Namespace, url: str, model: str, prog: str) -> int:
    """``--describe``: print the served model's description; 1 when the management API can't give it."""
    address = management_url(url, args.management_url)
    try:
        description = from_server(fetch_description(address, model, _management_token(args), args.timeout))
    except ApiError as error:
        sys.stderr.write(f"{prog}: cannot describe model {model!r}: {error}\n")
        return 1
    except (KeyError, TypeError, ValueError) as error:
        sys.stderr.write(f"{prog}: {address} sent a description this client can't read ({error})\n")
        return 1
    print(describe(description))
    return 0


def _work(pipeline: Pipeline, todo: queue.SimpleQueue, done: queue.SimpleQueue) -> None:
    """One worker thread: explain queued images until none is left; outcomes (or the error) go to ``done``."""
    while True:
        try:
            path, stem = todo.get_nowait()
        except queue.Empty:
            return
        try:
            done.put(pipeline.run(path, stem))
        except BaseException as error:  # noqa: BLE001 - handed to the main thread, which re-raises it
            done.put(error)


def run(pipeline: Pipeline, stems: dict[Path, str], concurrency: int, progress: Progress) -> list[Result]:
    """Explain every image with ``concurrency`` threads; results in input order.

    The threads are daemons, so Ctrl-C ends the program at once instead of waiting for
    requests in flight; an exception in a thread (a bug) is raised here.
    """
    todo: queue.SimpleQueue[tuple[Path, str]] = queue.SimpleQueue()
    for item in stems.items():
        todo.put(item)
    done: queue.SimpleQueue[Result | BaseException] = queue.SimpleQueue()
    for _ in range(min(concurrency, len(stems))):
        threading.Thread(target=_work, args=(pipeline, todo, done), daemon=True).start()
    results: dict[Path, Result] = {}
    for _ in stems:
        outcome = done.get()
        if isinstance(outcome, BaseException):
            raise outcome
        results[outcome.path] = outcome
        progress.advance(outcome.ok)
    progress.close()
    return [results[path] for path in stems]


def report_failures(results: list[Result], prog: str) -> None:
    """One stderr line per distinct error (the table on stdout has every image's row)."""
    failed: dict[str, list[Path]] = {}
    for result in results:
        if result.error is not None:
            failed.setdefault(result.error, []).append(result.path)
    for error, paths in failed.items():
        sys.stderr.write(f"{prog}: {paths[0] if len(paths) == 1 else f'{len(paths)} images'}: {error}\n")


def _original_alpha(cli: argparse.ArgumentParser, args: argparse.Namespace) -> float | None:
    """The map's opacity for ``--on original`` (None: the server's overlays); usage errors for what can't combine."""
    if args.on != "original":
        if args.alpha is not None:
            cli.error("--alpha applies to --on original (the server draws --on model overlays at 0.5)")
        return None
    if args.format != "overlay":
        cli.error(f"--on original draws the maps itself: it can't be combined with --format {args.format}")
    return ORIGINAL_ALPHA if args.alpha is None else args.alpha


def _explain_all(cli: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Validate the arguments, explain every image, print the summary; returns the exit status."""
    try:
        url, model = server_and_model(args.url, args.model)
    except ValueError as error:
        cli.error(str(error))
    if args.describe:
        return _describe(args, url, model, cli.prog)
    if not args.paths:
        cli.error("give image files or folders to explain (or --describe)")
    try:
        token = read_key_file(args.key_file) if args.key_file else args.token
        images = collect(args.paths)
    except (ValueError, OSError) as error:
        cli.error(str(error))
    if not images:
        cli.error(f"no image files found in {', '.join(map(str, args.paths))}")
    original_alpha = _original_alpha(cli, args)
    if args.format == "tiles" and args.method != "activations":  # the server would refuse every image
        cli.error(f"--format tiles (a mosaic of channels) is for --method activations, not {args.method!r}")
    targets, options = split_targets(args.target), method_options(args)
    description = model_description(args, url, model)
    problem = check_request(description, args.method, targets, options)
    problem = problem or check_faithfulness(description, args.method, args.faithfulness)
    if problem:
        cli.error(problem)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        cli.error(f"cannot create --out {args.out}: {error.strerror or error}")
    client = ExplainClient(url, model, token, args.timeout)
    answer_format = "grid" if original_alpha is not None else args.format  # the client draws grids itself
    request = Request(args.method, targets, args.top_k, answer_format, options, args.faithfulness)
    pipeline = Pipeline(client, request, args.out, args.sheet, original_alpha)
    progress = Progress(len(images), sys.stderr, enabled=sys.stderr.isatty() and any(p.is_dir() for p in args.paths))
    try:
        results = run(pipeline, output_stems(images), args.concurrency, progress)
    finally:
        client.close()
    report_failures(results, cli.prog)
    print(summary(results, Path.cwd(), args.out))
    return 0 if all(result.ok for result in results) else 1


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit status (Ctrl-C: one line, 130).

    ``video ...`` is the video command (``video_cli``); an image file named ``video`` is ``./video``.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["video"]:
        from .video_cli import main as video_main  # imports PyAV: only for videos

        return video_main(argv[1:])
    cli = parser()
    args = cli.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return _explain_all(cli, args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{cli.prog}: interrupted\n")
        return INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
