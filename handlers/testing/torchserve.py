"""Start and stop a real TorchServe (Java frontend + Python workers) on loopback ports.

Used by the integration tests and the benchmarks. Each server gets its own working
directory (logs, pid file via TMPDIR), free ports on 127.0.0.1 and its own process
session, so it is stopped by its process-group id and never touches another server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

TORCHSERVE = Path(sys.executable).parent / "torchserve"
PROD_CONFIG = Path(__file__).resolve().parents[2] / "config.prod.properties"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_properties(path: Path) -> dict[str, str]:
    """key=value lines of a Java properties file (comments and blanks skipped)."""
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def bearer(key: str) -> dict[str, str]:
    """The header that carries a TorchServe token key."""
    return {"Authorization": f"Bearer {key}"}


def read_keys(key_file: Path, timeout: float = 120) -> dict[str, str]:
    """The keys TorchServe writes to ``key_file`` at start-up, once the file is complete."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return {kind: entry["key"] for kind, entry in json.loads(key_file.read_text()).items()}
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class TorchServe:
    """One TorchServe instance serving ``models`` ({name: mar file name}) from ``model_store``."""

    def __init__(
        self,
        model_store: Path,
        models: dict[str, str],
        workdir: Path,
        config: dict[str, str] | None = None,
        base_config: Path | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = ("--ncs",),
        register: bool = True,
    ) -> None:
        """``base_config``: a config.properties to start from (default: no token, 1 worker);
        its addresses are always replaced by free loopback ports (a management address shared
        with inference stays shared); ``config`` overrides last; ``env`` adds environment
        variables for the server and its workers; ``args`` are more ``torchserve`` flags;
        ``register=False`` leaves loading ``models`` to the config (``model_snapshot``)."""
        self.model_store = model_store
        self.models = models
        self.workdir = workdir
        self.args = args
        self.register = register
        workdir.mkdir(parents=True, exist_ok=True)
        settings = (
            read_properties(base_config)
            if base_config
            else {"disable_token_authorization": "true", "default_workers_per_model": "1"}
        )
        if base_config and "metrics_config" in settings:  # relative to the config's folder, where `make serve` runs
            settings["metrics_config"] = str((base_config.parent / settings["metrics_config"]).resolve())
        inference = free_port()
        shared = settings.get("management_address", "") == settings.get("inference_address")
        management = inference if shared else free_port()
        self.ports = {"inference": inference, "management": management, "metrics": free_port()}
        settings.update({f"{kind}_address": f"http://127.0.0.1:{port}" for kind, port in self.ports.items()})
        # gRPC ports and worker sockets must not collide with another server either.
        settings.update(
            {
                "grpc_inference_port": str(free_port()),
                "grpc_management_port": str(free_port()),
                "initial_worker_port": str(free_port()),
            }
        )
        settings.update(config or {})
        self.config_path = workdir / "config.properties"
        self.config_path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        self.env = dict(env or {})
        self.keys: dict[str, str] = {}  # its token keys, for a config with token authorization on
        self.process: subprocess.Popen | None = None

    def url(self, kind: str = "inference") -> str:
        return f"http://127.0.0.1:{self.ports[kind]}"

    def start(self, timeout: float = 180.0, wait_ready: bool = True) -> TorchServe:
        """Launch in the foreground of its own session; wait until each model has a READY worker."""
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "LOG_LOCATION": str(logs),
            "METRICS_LOCATION": str(logs),
            "TMPDIR": str(self.workdir),
            **self.env,
        }
        command = [
            str(TORCHSERVE),
            "--start",
            "--foreground",
            *self.args,
            "--model-store",
            str(self.model_store),
            "--ts-config",
            str(self.config_path),
        ]
        if self.models and self.register:
            command += ["--models", *(f"{name}={mar}" for name, mar in self.models.items())]
        self.console = open(self.workdir / "console.log", "wb")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            command, cwd=self.workdir, env=env, stdout=self.console, stderr=subprocess.STDOUT, start_new_session=True
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def ready_workers(self, name: str, headers: dict[str, str] | None = None) -> int:
        """Number of READY workers of model ``name`` (0 while loading or unreachable)."""
        try:
            answer = requests.get(f"{self.url('management')}/models/{name}", headers=headers, timeout=5)
        except requests.RequestException:
            return 0
        if answer.status_code != 200:
            return 0
        return sum(w.get("status") == "READY" for entry in answer.json() for w in entry.get("workers", []))

    def wait_ready(self, timeout: float, headers: dict[str, str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self.process.returncode}:\n{self.tail()}")
            if all(self.ready_workers(name, headers) for name in self.models):
                return
            time.sleep(0.5)
        raise TimeoutError(f"models {list(self.models)} not ready after {timeout:.0f}s:\n{self.tail()}")

    def log(self, name: str = "model_log.log") -> str:
        path = self.workdir / "logs" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join((self.log("ts_log.log") + self.log()).splitlines()[-lines:])

    def worker_pids(self, name: str | None = None, headers: dict[str, str] | None = None) -> list[int]:
        """PIDs of the Python workers of model ``name`` (all models when None), from the management API."""
        names = [name] if name else list(self.models)
        pids = []
        for model in names:
            answer = requests.get(f"{self.url('management')}/models/{model}", headers=headers, timeout=10)
            pids += [int(w["pid"]) for entry in answer.json() for w in entry.get("workers", []) if w.get("pid", -1) > 0]
        return sorted(pids)

    def stop(self) -> None:
        """Stop the whole process group this server started, by its id."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        finally:
            self.console.close()
            self.process = None

    def __enter__(self) -> TorchServe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_with_tokens(server: TorchServe, timeout: float = 300) -> TorchServe:
    """Start ``server`` whose config turns token authorization on: its keys read, its workers ready."""
    server.start(wait_ready=False)
    try:
        server.keys = read_keys(server.workdir / "key_file.json")
        server.wait_ready(timeout, headers=bearer(server.keys["management"]))
    except BaseException:
        server.stop()
        raise
    return server


def java_process(server: TorchServe, timeout: float = 60) -> psutil.Process:
    """The Java frontend: the ``java`` process in the server's own process tree."""
    assert server.process is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(server.process.pid).children(recursive=True):
            if child.name() == "java":
                return child
        time.sleep(0.2)
    raise RuntimeError("no java process under the TorchServe launcher")


# Metaspace, code cache, threads and GC structures of TorchServe's frontend, on top of its
# heap and direct-memory caps (measured: benchmarks/frontend_memory.py).
JVM_OVERHEAD = 320 * 2**20


def jvm_size(vmargs: str, flag: str) -> int | None:
    """Bytes of a JVM size option such as ``-Xmx768m`` or ``-XX:MaxDirectMemorySize=256m`` in ``vmargs``."""
    match = re.search(re.escape(flag) + r"(\d+)([kKmMgG]?)", vmargs)
    if not match:
        return None
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2).lower()]
    return int(match.group(1)) * scale


def frontend_rss_bound(settings: dict[str, str]) -> int | None:
    """The sizing rule's bound on the frontend's RSS: heap cap + direct-memory cap + JVM overhead
    (None when the config leaves either unbounded)."""
    vmargs = settings.get("vmargs", "")
    heap, direct = jvm_size(vmargs, "-Xmx"), jvm_size(vmargs, "-XX:MaxDirectMemorySize=")
    if heap is None or direct is None:
        return None
    return heap + direct + JVM_OVERHEAD
