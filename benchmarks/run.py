"""Entry point: ``python -m benchmarks [--quick]`` (or ``python benchmarks/run.py``).

Runs the engine benchmark, the end-to-end TorchServe benchmark, the memory measurements,
the thread-settings comparison and the cost of every method of the registry, then writes
the markdown report and prints it: RESULTS.md for a full run of every section; otherwise
RESULTS-quick.md for --quick and RESULTS-<sections>.md for --only, so neither a smoke run
nor a partial one ever replaces published numbers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (
    camera_bench,
    e2e_bench,
    engine_bench,
    faithfulness_bench,
    gpu_bench,
    memory_bench,
    methods_bench,
    policy_bench,
    reproducibility_bench,
    scaling_bench,
    serve_bench,
    threads_bench,
    transformer_bench,
    video_bench,
)
from benchmarks.artifacts import build
from benchmarks.monitor import ForeignLoad
from benchmarks.report import Section, machine, targets_table
from benchmarks.settings import FULL, QUICK, Settings
from handlers.memory import reuse_freed_buffers

HERE = Path(__file__).resolve().parent
# Sections 5-14, in report order: each needs only the settings and the run's scratch folder.
LATER_SECTIONS: dict[str, Callable[[Settings, Path], Section]] = {
    "methods": lambda settings, _: methods_bench.run(settings),
    "transformers": lambda settings, _: transformer_bench.run(settings),
    "scaling": lambda settings, _: scaling_bench.run(settings),
    "reproducibility": lambda settings, _: reproducibility_bench.run(settings),
    "policy": policy_bench.run,
    "camera": camera_bench.run,
    "faithfulness": lambda settings, _: faithfulness_bench.run(settings),
    "video": video_bench.run,
    "serve": serve_bench.run,
    "gpu": lambda settings, _: gpu_bench.run(settings),
}
SECTIONS = ("engine", "e2e", "memory", "threads", *LATER_SECTIONS)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run of every path (< 2 min on an idle machine)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="sections to run (engine: 1, e2e: 2, memory: 3, threads: 4, methods: 5, transformers: 6, "
        "scaling: 7, reproducibility: 8, policy: 9, camera: 10, faithfulness: 11, video: 12, serve: 13, "
        "gpu: 14); default: all",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="report file (default: benchmarks/RESULTS.md for a full run, RESULTS-quick.md for --quick, "
        "RESULTS-<sections>.md for --only)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of the engine and memory sections (default 1: the worker "
        "setting section 4 recommends, and CPU time then measures compute even on a busy machine)",
    )
    return parser.parse_args(argv)


def run_sections(settings: Settings, only: list[str], workdir: Path) -> list[Section]:
    """Every requested section, in report order; servers live only inside their section."""
    sections: list[Section] = []
    if "engine" in only:
        sections.append(engine_bench.run(settings))
    store = workdir / "model_store"
    models = tuple(dict.fromkeys((*settings.e2e_models, *settings.thread_models)))
    served = build(store, models) if {"e2e", "threads"} & set(only) else {}
    worker_memory: list[str] = []
    if "e2e" in only:
        runs = [e2e_bench.measure(served[m], store, workdir, settings) for m in settings.e2e_models]
        end_to_end, worker_memory = e2e_bench.report(runs, settings)
        sections.append(end_to_end)
    if "memory" in only or worker_memory:
        memory = memory_bench.run() if "memory" in only else Section("3. Memory")
        memory.add(*worker_memory)
        sections.append(memory)
    if "threads" in only:
        sections.append(threads_bench.run(served, store, workdir, settings))
    sections += [run(settings, workdir) for name, run in LATER_SECTIONS.items() if name in only]
    return sections


def default_output(quick: bool, only: list[str]) -> Path:
    """Where the report goes unless --output says: only a full run of every section is RESULTS.md."""
    if quick:
        return HERE / "RESULTS-quick.md"
    if set(only) != set(SECTIONS):
        return HERE / f"RESULTS-{'-'.join(s for s in SECTIONS if s in only)}.md"
    return HERE / "RESULTS.md"


def render(settings: Settings, sections: list[Section], described: str, minutes: float, load: ForeignLoad) -> str:
    """The whole report. CPU-min of the run over the core count bounds from below the wall
    time the same run needs on an idle machine."""
    targets = [t for s in sections for t in s.targets]
    head = [
        "# Benchmarks: explanations at almost no extra cost",
        f"{described} Settings: `{settings.name}`; the run took {minutes:.1f} min wall and "
        f"{load.own_s / 60:.1f} CPU-min (benchmark, its servers and clients); during it {load.summary().describe()}. "
        "MB = 2^20 bytes. Regenerate with `python -m benchmarks` (full) or `python -m benchmarks --quick`.",
        "## Targets",
        targets_table(targets) if targets else "(no target measured in this run)",
    ]
    return "\n\n".join([*head, *(s.markdown() for s in sections)]) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    settings = QUICK if args.quick else FULL
    output = args.output or default_output(args.quick, args.only)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", module="captum")  # per-call notices of its documented usage
    torch.set_num_threads(args.threads)
    reuse_freed_buffers()  # as the worker does at load, so the engine is timed as it runs there
    started, described = time.monotonic(), machine()
    with ForeignLoad() as load, tempfile.TemporaryDirectory(prefix="gradcam-bench-") as tmp:
        sections = run_sections(settings, args.only, Path(tmp))
    text = render(settings, sections, described, (time.monotonic() - started) / 60, load)
    output.write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {output}")


if __name__ == "__main__":
    main()
