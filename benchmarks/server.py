"""A real TorchServe for the benchmarks: ``handlers.testing.torchserve.TorchServe`` plus worker environment.

``BenchServer`` adds:
- environment variables for the server and hence its Python workers (TorchServe 0.12
  passes its own environment on to them and sets OMP_NUM_THREADS only for torchrun models);
- private gRPC ports and worker socket names: by default every TorchServe binds gRPC on
  7070/7071 (a second server on the machine dies with "Address already in use") and
  names its worker sockets /tmp/.ts.sock.9000, 9001, ... (servers would share them);
- no system-metrics collector: a separate Python process once a minute, pure noise here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import psutil
import requests

from handlers.testing.torchserve import TorchServe, free_port

REPO = Path(__file__).resolve().parents[1]
SOCKET_DIR = Path("/tmp")  # java.io.tmpdir, where TorchServe puts .ts.sock.<port>
MAX_WORKERS = 16


def _worker_socket_base() -> int:
    """A first worker 'port' whose socket names no other server on the machine uses."""
    while True:
        base = free_port()
        if not any((SOCKET_DIR / f".ts.sock.{base + i}").exists() for i in range(MAX_WORKERS)):
            return base


def private_config() -> dict[str, str]:
    """config.properties keys that keep this server off every other server's resources."""
    return {
        "disable_system_metrics": "true",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": str(free_port()),
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": str(free_port()),
        "initial_worker_port": str(_worker_socket_base()),
    }


class BenchServer(TorchServe):
    """TorchServe started with extra environment variables (e.g. OMP_NUM_THREADS=1)."""

    def __init__(
        self,
        model_store: Path,
        models: dict[str, str],
        workdir: Path,
        config: dict[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(model_store, models, workdir, {**private_config(), **(config or {})}, env=dict(env or {}))

    def start(self, timeout: float = 600.0, wait_ready: bool = True) -> BenchServer:
        """Start it; benchmark models may take longer to load than the tests' (a longer default)."""
        super().start(timeout, wait_ready)
        return self

    def model_worker_pids(self, model: str) -> list[int]:
        """PIDs of the Python workers serving ``model`` (from the management API)."""
        answer = requests.get(f"{self.url('management')}/models/{model}", timeout=10)
        answer.raise_for_status()
        return [int(worker["pid"]) for entry in answer.json() for worker in entry.get("workers", [])]


def peak_rss(pid: int) -> int:
    """Peak resident set size of a process so far, in bytes (VmHWM, Linux)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def rss(pid: int) -> int:
    """Current resident set size in bytes."""
    return psutil.Process(pid).memory_info().rss
