"""Java frontend memory under a burst of large concurrent uploads: old vs new production config.

``python -m benchmarks.frontend_memory [--n 300 900]`` starts a real TorchServe per
(config, N) with the default model and token authorization, sends N concurrent uploads of
one ~5.8 MB body, samples the RSS of the Java frontend (the ``java`` child of the server's
process group) during the burst and after it settles, then checks that a normal request
still gets the right answer. Results go to benchmarks/RESULTS-frontend.md (its own section,
so the burst benchmark's section survives) and stdout.

The body is a valid PNG of noise (1400 x 1400 RGB, incompressible): every upload is read
whole by the frontend, copied onto the Java heap, queued, and decoded by a worker. That is
the worst case for the frontend, because the queue drains only as fast as the workers
decode; arbitrary bytes reach the worker too (the frontend does not look inside) but are
refused at once, so the queue drains faster. What is refused *early* costs less: a body
over ``max_request_size`` gets 413 before it is read; a missing token is checked only after
the whole body has been aggregated (the aggregator sits before the auth handler), so
unauthenticated uploads cost direct memory too (the ``no token`` row).

"old" is config.prod.properties without its memory keys (``vmargs``, ``job_queue_size``):
the JVM then takes a quarter of the machine's RAM as heap and as much again for direct
buffers. "new" is config.prod.properties as it is.
"""

from __future__ import annotations

import argparse
import io
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

from benchmarks.report import machine, table
from benchmarks.server import REPO, private_config
from handlers.archive import main as archive_main
from handlers.testing.torchserve import JVM_OVERHEAD, TorchServe, frontend_rss_bound, java_process, start_with_tokens

PROD_CONFIG = REPO / "config.prod.properties"
RESULTS = REPO / "benchmarks" / "RESULTS-frontend.md"
MEMORY_KEYS = ("vmargs", "job_queue_size")
SAMPLE = REPO / "handlers" / "inspection" / "samples" / "scratch.png"
MIB = 2**20
MAX_UPLOADS = 1000  # threads of one burst; a bound on the client as much as on the server
GUARD_AVAILABLE = 4 * 2**30  # stop a run when the machine has less than this available
SECTION = "Frontend memory under concurrent large uploads"


def noise_png(side: int = 1400, seed: int = 7) -> bytes:
    """An incompressible valid PNG, side x side RGB (1400 px: ~5.9 MB)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def properties_without(path: Path, keys: tuple[str, ...], out: Path) -> Path:
    """A copy of the properties file ``path`` with the lines setting ``keys`` removed."""
    kept = [line for line in path.read_text().splitlines() if line.split("=", 1)[0].strip() not in keys]
    out.write_text("\n".join(kept) + "\n")
    return out


def memory_settings(path: Path) -> dict[str, str]:
    """The memory-relevant keys of a properties file (absent keys: TorchServe's defaults)."""
    pairs = dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    return {key: pairs[key].strip() for key in (*MEMORY_KEYS, "max_request_size") if key in pairs}


@contextmanager
def prod_server(store: Path, workdir: Path, base_config: Path) -> Iterator[TorchServe]:
    """TorchServe from ``base_config`` (token auth on) on private loopback ports; ``keys`` set."""
    server = start_with_tokens(
        TorchServe(store, {"inspection": "inspection.mar"}, workdir, private_config(), base_config)
    )
    try:
        yield server
    finally:
        server.stop()


class RssSampler:
    """Samples a process's RSS every ``interval`` s in a thread; raises ``low_memory`` when the
    machine's available memory drops under ``GUARD_AVAILABLE`` (the caller then stops)."""

    def __init__(self, process: psutil.Process, interval: float = 0.1) -> None:
        self.process, self.interval = process, interval
        self.peak = process.memory_info().rss
        self.low_memory = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            if psutil.virtual_memory().available < GUARD_AVAILABLE:
                self.low_memory.set()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def outcome(answer: requests.Response | None) -> str:
    """Status class of one upload: 200, 4xx, 5xx or conn (no HTTP answer)."""
    if answer is None:
        return "conn"
    return "200" if answer.status_code == 200 else f"{answer.status_code // 100}xx"


def burst(url: str, body: bytes, headers: dict[str, str], n: int, stop: threading.Event, timeout: float) -> Counter:
    """N threads each POST ``body`` once, all at the same time; counts of each outcome.

    Bounded: N <= MAX_UPLOADS, one request per thread, ``timeout`` per request; threads not
    yet started when ``stop`` is set send nothing."""
    if not 0 < n <= MAX_UPLOADS:
        raise ValueError(f"N must be in 1..{MAX_UPLOADS}")
    outcomes: Counter = Counter()
    lock = threading.Lock()
    gate = threading.Barrier(n)

    def upload() -> None:
        gate.wait()
        if stop.is_set():
            result = "skipped"
        else:
            try:
                result = outcome(requests.post(url, data=body, headers=headers, timeout=timeout))
            except requests.RequestException:
                result = outcome(None)
        with lock:
            outcomes[result] += 1

    previous = threading.stack_size(512 * 1024)
    threads = [threading.Thread(target=upload, daemon=True) for _ in range(n)]
    threading.stack_size(previous)
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout + 30
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return outcomes


def answers_normally(server: TorchServe) -> bool:
    """A small authorised prediction of the scratch sample comes back 200 and says "scratch"."""
    try:
        answer = requests.post(
            f"{server.url()}/predictions/inspection",
            data=SAMPLE.read_bytes(),
            headers={"Authorization": f"Bearer {server.keys['inference']}"},
            timeout=60,
        )
        return answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "scratch"
    except (requests.RequestException, ValueError, KeyError, IndexError):
        return False


@dataclass(frozen=True)
class Row:
    """One measured burst."""

    config: str
    settings: dict[str, str]
    n: int
    token: bool
    rest_mb: float
    peak_mb: float
    after_mb: float
    outcomes: Counter
    duration_s: float
    healthy: bool
    aborted: bool

    HEADERS = (
        "config",
        "N",
        "token",
        "RSS at rest",
        "peak RSS",
        "RSS after",
        "predicted bound",
        "200 / 4xx / 5xx / conn err",
        "burst s",
        "answers afterwards",
    )

    def cells(self) -> list[str]:
        bound = frontend_rss_bound(self.settings)
        statuses = " / ".join(str(self.outcomes.get(k, 0)) for k in ("200", "4xx", "5xx", "conn"))
        if self.aborted:
            statuses += f" (stopped: machine memory low; {self.outcomes.get('skipped', 0)} not sent)"
        return [
            self.config,
            str(self.n),
            "yes" if self.token else "no",
            f"{self.rest_mb:.0f} MB",
            f"{self.peak_mb:.0f} MB",
            f"{self.after_mb:.0f} MB",
            f"{bound / MIB:.0f} MB" if bound else "none",
            statuses,
            f"{self.duration_s:.1f}",
            "yes" if self.healthy else "NO",
        ]


def measure(
    name: str, config: Path, store: Path, workdir: Path, n: int, body: bytes, token: bool = True, settle_s: float = 10
) -> Row:
    """One fresh server from ``config``, one burst of N uploads of ``body``, RSS before/peak/after."""
    with prod_server(store, workdir, config) as server:
        java = java_process(server)
        time.sleep(2)
        rest = java.memory_info().rss
        headers = {"Content-Type": "image/png"}
        if token:
            headers["Authorization"] = f"Bearer {server.keys['inference']}"
        with RssSampler(java) as sampler:
            started = time.monotonic()
            stop = sampler.low_memory
            watcher = threading.Thread(target=_stop_on_low_memory, args=(server, stop), daemon=True)
            watcher.start()
            outcomes = burst(f"{server.url()}/predictions/inspection", body, headers, n, stop, timeout=180)
            duration = time.monotonic() - started
            if not stop.is_set():
                time.sleep(settle_s)
        aborted = stop.is_set()
        after = java.memory_info().rss if java.is_running() else 0
        healthy = not aborted and answers_normally(server)
        return Row(
            name,
            memory_settings(config),
            n,
            token,
            rest / MIB,
            sampler.peak / MIB,
            after / MIB,
            outcomes,
            duration,
            healthy,
            aborted,
        )


def _stop_on_low_memory(server: TorchServe, low_memory: threading.Event) -> None:
    """Stop the server (its process group) at once if the machine runs short of memory."""
    while server.process is not None and not low_memory.wait(0.5):
        pass
    if low_memory.is_set():
        server.stop()


def write_section(title: str, text: str, path: Path = RESULTS) -> None:
    """Replace (or append) the ``## title`` section of ``path``, keeping the other sections."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Frontend benchmarks\n"
    parts = re.split(r"(?m)^(?=## )", old)
    new = f"## {title}\n\n{text.strip()}"
    kept = [new if part.startswith(f"## {title}\n") else part.strip() for part in parts]
    if new not in kept:
        kept.append(new)
    path.write_text("\n\n".join(kept) + "\n", encoding="utf-8")


def describe(rows: list[Row], body: bytes) -> str:
    """The markdown section: machine, body, the two configs' settings, the table."""
    configs = {row.config: row.settings for row in rows}
    settings = "; ".join(
        f"{name}: " + (", ".join(f"`{k}={v}`" for k, v in values.items()) or "none") for name, values in configs.items()
    )
    return "\n\n".join(
        [
            machine(),
            f"Body: one valid {len(body) / MIB:.1f} MB PNG of noise, sent by N threads at once (one upload each) "
            "with `Content-Type: image/png`. RSS of the Java process: at rest before the burst, peak (sampled "
            "every 0.1 s), and 10 s after the last answer. Predicted bound: `-Xmx` + `-XX:MaxDirectMemorySize` "
            f"+ {JVM_OVERHEAD / MIB:.0f} MB JVM overhead. MB = 2^20 bytes. "
            "Regenerate with `python -m benchmarks.frontend_memory`.",
            f"Settings: {settings}.",
            table(Row.HEADERS, [row.cells() for row in rows]),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frontend_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[300, 900], help="burst sizes (each ≤ 1000)")
    parser.add_argument("--configs", nargs="+", choices=("old", "new"), default=["old", "new"])
    parser.add_argument("--no-token-row", action="store_true", help="skip the unauthenticated burst on the new config")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--title", default=SECTION, help="section of the output file to (re)write")
    args = parser.parse_args(argv)
    body = noise_png()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="frontend-memory-") as tmp:
        root = Path(tmp)
        store = root / "model_store"
        archive_main(["inspection", "--export-path", str(store)])
        configs = {"old": properties_without(PROD_CONFIG, MEMORY_KEYS, root / "old.properties"), "new": PROD_CONFIG}
        runs = [(name, n, True) for n in args.n for name in args.configs]
        if not args.no_token_row and "new" in args.configs:
            runs.append(("new", max(args.n), False))
        for index, (name, n, token) in enumerate(runs):
            row = measure(name, configs[name], store, root / f"run{index}", n, body, token)
            rows.append(row)
            print(" | ".join(row.cells()), flush=True)
            if row.aborted:
                break
    text = describe(rows, body)
    write_section(args.title, text, args.output)
    print(text)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
