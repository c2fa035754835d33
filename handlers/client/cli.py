"""``torchserve-gradcam`` / ``python -m handlers.client``: explain images with a running TorchServe.

For every image: ``<stem>.overlay.png`` (the server's jet overlay), ``<stem>.json`` (its
answer, overlays as file names) and with ``--sheet`` a four-panel ``<stem>.sheet.png``.
Requests go out ``--concurrency`` at a time so the server can batch them. Exit status:
0 all explained, 1 some image failed (the others are still done), 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .api import ExplainClient, read_key_file
from .inputs import collect, output_stems
from .pipeline import Pipeline, Request, Result
from .report import Progress, summary

METHODS = ("gradcam", "guided_gradcam", "none")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="torchserve-gradcam",
        description="Send images to TorchServe; save Grad-CAM overlays, the JSON answers and optional contact sheets.",
    )
    cli.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="image files and/or folders (scanned recursively)"
    )
    cli.add_argument(
        "--url", default="http://127.0.0.1:8080", help="TorchServe inference address (default %(default)s)"
    )
    cli.add_argument("--model", default="inspection", help="model name (default %(default)s)")
    cli.add_argument("--method", choices=METHODS, default="gradcam", help="explanation method (default %(default)s)")
    cli.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="LABEL|INDEX",
        help="class(es) to explain, repeatable or comma-separated (default: the top prediction)",
    )
    cli.add_argument("--top-k", type=_positive, help="predictions per image (default: the model's own)")
    auth = cli.add_mutually_exclusive_group()
    auth.add_argument("--token", help="TorchServe inference key (token authorization on)")
    auth.add_argument("--key-file", type=Path, help="TorchServe's key_file.json: its inference key is used")
    cli.add_argument(
        "--concurrency", type=_positive, default=4, help="requests in flight at once (default %(default)s)"
    )
    cli.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for one answer (default %(default)s)"
    )
    cli.add_argument("--out", type=Path, default=Path("explanations"), help="output folder (default ./%(default)s)")
    cli.add_argument(
        "--sheet",
        action="store_true",
        help="also write <stem>.sheet.png: input | probabilities | Grad-CAM | Guided Grad-CAM",
    )
    cli.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return cli


def _targets(values: list[str]) -> tuple[str, ...]:
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


def run(pipeline: Pipeline, stems: dict[Path, str], concurrency: int, progress: Progress) -> list[Result]:
    """Explain every image with ``concurrency`` threads; results in input order."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(pipeline.run, path, stem): path for path, stem in stems.items()}
        done: dict[Path, Result] = {}
        for future in as_completed(futures):
            result = future.result()
            done[futures[future]] = result
            progress.advance(result.ok)
    progress.close()
    return [done[path] for path in stems]


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    cli = parser()
    args = cli.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        token = read_key_file(args.key_file) if args.key_file else args.token
        images = collect(args.paths)
    except (ValueError, FileNotFoundError) as error:
        cli.error(str(error))
    if not images:
        cli.error(f"no image files found in {', '.join(map(str, args.paths))}")
    if args.method == "none" and args.target:
        cli.error("--target needs an explanation method (gradcam or guided_gradcam)")
    args.out.mkdir(parents=True, exist_ok=True)
    client = ExplainClient(args.url, args.model, token, args.timeout)
    pipeline = Pipeline(client, Request(args.method, _targets(args.target), args.top_k), args.out, args.sheet)
    progress = Progress(len(images), sys.stderr, enabled=sys.stderr.isatty() and any(p.is_dir() for p in args.paths))
    try:
        results = run(pipeline, output_stems(images), args.concurrency, progress)
    finally:
        client.close()
    print(summary(results, Path.cwd(), args.out))
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
