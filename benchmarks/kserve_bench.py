"""KServe protocols under concurrency: TorchServe's envelopes against our handler's own parsing.

``python -m benchmarks.kserve_bench [--requests N]`` starts TorchServe exactly as KServe's
``kserve-torchserve`` runtime does (``torchserve --start --model-store DIR/model-store
--ts-config DIR/config/config.properties --disable-token-auth --enable-model-api``,
``TS_SERVICE_ENVELOPE`` set), on a storage layout written by ``python -m handlers.archive
--kserve-layout`` (addresses moved to free loopback ports), once per row:

- TorchServe's envelope (the config with ``enable_envvars_config=true``, so the variable
  applies) in front of TorchServe's stock ``ImageClassifier`` on the same weights, which the
  envelope was written for, at ``batchSize`` 8 and at 1;
- our layout (``enable_envvars_config=false``: the variable is ignored, the handler parses
  v1/v2 itself) at ``batchSize`` 8 and 1, each answer with its Grad-CAM;
- our layout with ``enable_envvars_config=true`` forced, to show what the setting prevents.

Every server's workers run one torch thread (``OMP_NUM_THREADS=1``, which our handler also
sets by itself; the stock handler would otherwise run a thread per core, which on a busy
machine measures OpenMP contention, not the protocol). Every row sends the same N one-image
requests at concurrency 8 and counts the answers that came back 200 in the protocol's shape,
the failures by status, and the answered requests per second (wall time of the whole run);
the served ``batchSize`` is read back from the management API, and the requests per batch
from our handler's log. Results: benchmarks/RESULTS-kserve.md.
"""

from __future__ import annotations

import argparse
import base64
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from benchmarks.artifacts import build_stock
from benchmarks.frontend_memory import write_section
from benchmarks.report import machine, table
from handlers.archive import main as archive_main
from handlers.inspection import WEIGHTS_FILE
from handlers.inspection.samples import SAMPLES_DIR
from handlers.kserve_layout import ServingSettings, properties
from handlers.testing.torchserve import TorchServe

RESULTS = Path(__file__).resolve().parent / "RESULTS-kserve.md"
KSERVE_ARGS = ("--disable-token-auth", "--enable-model-api")
CONCURRENCY = 8
BATCH_DELAY_MS = 50
NAME = "inspection"
HEADERS = ["handler", "envelope", "batchSize", "answered", "failed", "answered/s", "requests per batch (mean / max)"]
Measured = tuple[int, int, Counter, float, list[int]]
BATCH_LOG = re.compile(r"KServe batch of (\d+) requests")


@dataclass
class Row:
    handler: str
    envelope: str
    batch_size: int
    ok: int
    failed: Counter
    seconds: float
    batches: list[int]

    def cells(self) -> list[object]:
        failures = ", ".join(f"{count} x {status}" for status, count in sorted(self.failed.items())) or "none"
        total = self.ok + sum(self.failed.values())
        return [
            self.handler,
            self.envelope,
            self.batch_size,
            f"{self.ok}/{total}",
            failures,
            f"{self.ok / self.seconds:.1f}",
            f"{sum(self.batches) / len(self.batches):.1f} / {max(self.batches)}" if self.batches else "not logged",
        ]


def _images() -> list[str]:
    return [base64.b64encode(path.read_bytes()).decode() for path in sorted(SAMPLES_DIR.glob("*.png"))]


def v1_body(image: str) -> dict:
    return {"instances": [{"data": image}]}


def v2_body(image: str) -> dict:
    return {"id": "bench", "inputs": [{"name": "data", "datatype": "BYTES", "shape": [1], "data": [image]}]}


def v1_ok(answer: dict) -> bool:
    return isinstance(answer.get("predictions"), list) and len(answer["predictions"]) == 1


def v2_ok(answer: dict) -> bool:
    return isinstance(answer.get("outputs"), list) and all(o.get("shape") == [1] for o in answer["outputs"])


PROTOCOLS: dict[str, tuple[str, Callable[[str], dict], Callable[[dict], bool]]] = {
    "kserve": (f"/v1/models/{NAME}:predict", v1_body, v1_ok),
    "kservev2": (f"/v2/models/{NAME}/infer", v2_body, v2_ok),
}


def layout(root: Path, batch_size: int, stock_mar: Path | None) -> Path:
    """A KServe storage layout: ours from the archive CLI, or the stock MAR with the same config."""
    if stock_mar is None:
        archive_main(
            [
                *(NAME, "--no-check", "--batch-size", str(batch_size), "--max-batch-delay", str(BATCH_DELAY_MS)),
                *("--kserve-layout", str(root), "--kserve-root", str(root)),
            ]
        )
        return root
    (root / "model-store").mkdir(parents=True)
    shutil.copyfile(stock_mar, root / "model-store" / f"{NAME}.mar")
    (root / "config").mkdir()
    settings = ServingSettings(NAME, "1.0", batch_size, BATCH_DELAY_MS, 1, 120)
    (root / "config" / "config.properties").write_text(properties(settings, str(root), metrics_yaml=False))
    return root


def run(root: Path, envelope: str, apply_envelope: bool, requests_total: int) -> Measured:
    """Start TorchServe as KServe does on ``root``; send the requests. Returns the served batchSize, the
    answered count, failures by status, seconds, and the requests per batch our handler logged."""
    config = {"enable_envvars_config": "true"} if apply_envelope else {}
    server = TorchServe(
        root / "model-store",
        {NAME: f"{NAME}.mar"},
        root / "config",
        base_config=root / "config" / "config.properties",
        config={**config, "disable_system_metrics": "true"},
        env={"TS_SERVICE_ENVELOPE": envelope, "OMP_NUM_THREADS": "1"},
        args=KSERVE_ARGS,
        register=False,
    )
    path, body, ok = PROTOCOLS[envelope]
    images = _images()
    with server:
        url = server.url() + path
        session = requests.Session()

        def send(i: int) -> int:
            answer = session.post(url, json=body(images[i % len(images)]), timeout=120)
            return 0 if answer.status_code == 200 and ok(answer.json()) else answer.status_code

        start = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            outcomes = list(pool.map(send, range(requests_total)))
        seconds = time.perf_counter() - start
        described = requests.get(f"{server.url('management')}/models/{NAME}", timeout=10).json()
        batches = [int(n) for n in BATCH_LOG.findall(server.log())]
    failed = Counter(code for code in outcomes if code)
    return described[0]["batchSize"], outcomes.count(0), failed, seconds, batches


def main(argv: list[str] | None = None) -> None:
    """Run every row, print the table, write benchmarks/RESULTS-kserve.md."""
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--requests", type=int, default=400, help="requests per row (default 400)")
    args = options.parse_args(argv)
    about = machine()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kserve-bench-") as tmp:
        work = Path(tmp)
        (work / "stock").mkdir()
        stock_mar = work / "stock" / build_stock(work / "stock", "inspection", NAME, WEIGHTS_FILE)
        plan = [
            ("stock ImageClassifier", True, stock_mar),
            ("ours (gradcam in every answer)", False, None),
            ("ours, envelope forced on", True, None),
        ]
        for handler, apply_envelope, mar in plan:
            for batch_size in (8, 1):
                for envelope in PROTOCOLS:
                    root = layout(work / f"{len(rows)}", batch_size, mar)
                    served, ok, failed, seconds, batches = run(root, envelope, apply_envelope, args.requests)
                    shown = f"TorchServe's `{envelope}`" if apply_envelope else f"none (`{envelope}` set, ignored)"
                    rows.append(Row(handler, shown, served, ok, failed, seconds, batches))
                    print(
                        table(
                            ["handler", "envelope", "batchSize", "answered", "failed", "answered/s"], [rows[-1].cells()]
                        )
                    )
    text = "\n\n".join(
        [
            about,
            f"{args.requests} one-image requests per row at concurrency {CONCURRENCY} (the four sample PNGs of "
            f"`handlers/inspection/samples`), maxBatchDelay {BATCH_DELAY_MS} ms, one worker with one torch thread "
            "(`OMP_NUM_THREADS=1`); TorchServe started "
            "as KServe's runtime starts it, on the layout of `python -m handlers.archive --kserve-layout`. "
            "Answered: HTTP 200 with one answer in the protocol's shape. Regenerate with "
            "`python -m benchmarks.kserve_bench`.",
            table(HEADERS, [r.cells() for r in rows]),
        ]
    )
    if not RESULTS.exists():
        RESULTS.write_text("# KServe benchmarks\n", encoding="utf-8")
    write_section("KServe v1/v2: TorchServe's envelopes against the handler's own parsing", text, RESULTS)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
