"""KServe's storage layout for one MAR: the folder a ``storageUri`` of the ``pytorch`` runtime points at.

KServe's ``kserve-torchserve`` ClusterServingRuntime copies the storage to ``/mnt/models`` and
runs ``torchserve --start --model-store=/mnt/models/model-store
--ts-config=/mnt/models/config/config.properties`` (newer runtimes add ``--disable-token-auth
--enable-model-api``) with ``TS_SERVICE_ENVELOPE`` set from the protocol version
(kserve/kserve ``config/runtimes/kserve-torchserve.yaml``). Its image (``pytorch/torchserve-kfs``)
runs the KServe wrapper on port 8080, which forwards to TorchServe's ``inference_address``
(pytorch/serve ``kubernetes/kserve/kserve_wrapper``). So the config written here:

- puts inference and management on 127.0.0.1:8085, where only the wrapper in the pod reaches
  them, and metrics on 0.0.0.0:8082, the port the runtime's Prometheus annotation names;
- keeps ``enable_envvars_config`` off: TorchServe then ignores ``TS_SERVICE_ENVELOPE``, whose
  envelopes answer only request 0 of a batch, and our handler speaks v1 and v2 itself;
- loads the model from ``model_snapshot`` (KServe passes no ``--models``) with the MAR's batching.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storageUri's content
INFERENCE_ADDRESS = "http://127.0.0.1:8085"  # the KServe wrapper's default TorchServe address
METRICS_ADDRESS = "http://0.0.0.0:8082"  # the kserve-torchserve runtime's prometheus.kserve.io/port
METRICS_YAML = Path(__file__).resolve().parent / "serving" / "metrics.yaml"
# The plain Deployment (deploy/kubernetes): no wrapper, TorchServe itself on the pod's port 8080.
PLAIN_INFERENCE_ADDRESS = "http://0.0.0.0:8080"
PLAIN_MANAGEMENT_ADDRESS = "http://127.0.0.1:8081"
PLAIN_CONFIG = "/etc/torchserve/config.properties"  # the ConfigMap's mount
# Frontend memory, per the sizing rule of config.prod.properties (README, "Frontend memory").
JOB_QUEUE_SIZE = 32
MAX_REQUEST_BYTES = 10 * 2**20
NETTY_THREADS = 2
MB = 2**20


@dataclass(frozen=True)
class ServingSettings:
    """What the config says about the one model it loads."""

    name: str
    version: str
    batch_size: int
    max_batch_delay: int
    workers: int
    response_timeout: int


def model_snapshot(settings: ServingSettings) -> dict:
    """TorchServe's start-up snapshot: the model, its batching and its workers."""
    entry = {
        "defaultVersion": True,
        "marName": f"{settings.name}.mar",
        "minWorkers": settings.workers,
        "maxWorkers": settings.workers,
        "batchSize": settings.batch_size,
        "maxBatchDelay": settings.max_batch_delay,
        "responseTimeout": settings.response_timeout,
    }
    return {"name": "startup.cfg", "modelCount": 1, "models": {settings.name: {settings.version: entry}}}


def vmargs(settings: ServingSettings) -> str:
    """JVM caps from the sizing rule: direct memory for queued and batched uploads, heap for their copies."""
    in_flight = JOB_QUEUE_SIZE + settings.workers * settings.batch_size
    netty = in_flight * MAX_REQUEST_BYTES * 3 // 2
    heap = 200 * MB + (in_flight + NETTY_THREADS) * MAX_REQUEST_BYTES
    return (
        f"-Xmx{heap // MB}m -XX:MaxDirectMemorySize={(netty + 128 * MB) // MB}m -Dio.netty.maxDirectMemory={netty} "
        "-Dio.netty.tryReflectionSetAccessible=true --add-opens=java.base/java.nio=ALL-UNNAMED"
    )


def _addresses(kserve: bool, root: str) -> list[str]:
    if kserve:
        return [
            "# Written by python -m handlers.archive --kserve-layout: KServe's pytorch runtime starts",
            f"#   torchserve --start --model-store={root}/model-store --ts-config={root}/config/config.properties",
            "# (newer runtimes add --disable-token-auth --enable-model-api) with TS_SERVICE_ENVELOPE=kserve|kservev2.",
            "# Only the KServe wrapper in the pod (port 8080) reaches inference and management: loopback.",
            f"inference_address={INFERENCE_ADDRESS}",
            f"management_address={INFERENCE_ADDRESS}",
            f"metrics_address={METRICS_ADDRESS}",
        ]
    return [
        "# Written by python -m handlers.kserve_layout --plain for deploy/kubernetes: the pod runs",
        f"#   torchserve --start --foreground --model-store {root}/model-store --ts-config {PLAIN_CONFIG}",
        "# Inference and metrics on the pod network (a NetworkPolicy says who may call them); management in-pod.",
        f"inference_address={PLAIN_INFERENCE_ADDRESS}",
        f"management_address={PLAIN_MANAGEMENT_ADDRESS}",
        f"metrics_address={METRICS_ADDRESS}",
        "enable_model_api=false",
    ]


def properties(settings: ServingSettings, root: str = MOUNT, metrics_yaml: bool = True, kserve: bool = True) -> str:
    """config.properties for KServe's TorchServe runtime, or (``kserve=False``) for the plain Deployment
    of deploy/kubernetes; ``root``: where the storage layout is mounted."""
    lines = [
        *_addresses(kserve, root),
        "grpc_inference_address=127.0.0.1",
        "grpc_management_address=127.0.0.1",
        "# Off on purpose: with it TorchServe applies TS_SERVICE_ENVELOPE, whose envelopes answer only",
        "# request 0 of a batch (pytorch/serve #2158). The handler answers KServe v1 and v2 itself.",
        "enable_envvars_config=false",
        "# Access control is the cluster's (ingress, NetworkPolicy), not TorchServe tokens: clients send none.",
        "disable_token_authorization=true",
        "enable_metrics_api=true",
        "metrics_mode=prometheus",
    ]
    if metrics_yaml:
        lines.append(f"metrics_config={root}/config/metrics.yaml")
    lines += [
        "install_py_dep_per_model=false",
        f"model_store={root}/model-store",
        f"model_snapshot={json.dumps(model_snapshot(settings), separators=(',', ':'))}",
        f"default_workers_per_model={settings.workers}",
        f"number_of_netty_threads={NETTY_THREADS}",
        f"netty_client_threads={NETTY_THREADS}",
        f"job_queue_size={JOB_QUEUE_SIZE}",
        f"max_request_size={MAX_REQUEST_BYTES}",
        f"max_response_size={MAX_REQUEST_BYTES}",
        f"vmargs={vmargs(settings)}",
    ]
    return "\n".join(lines) + "\n"


def write_layout(directory: Path, mar: Path, settings: ServingSettings, root: str = MOUNT) -> Path:
    """``directory``/config/config.properties (+ metrics.yaml when shipped) and model-store/NAME.mar."""
    store = directory / "model-store"
    store.mkdir(parents=True, exist_ok=True)
    target = store / f"{settings.name}.mar"
    if mar.resolve() != target.resolve():
        shutil.copyfile(mar, target)
    config = directory / "config"
    config.mkdir(parents=True, exist_ok=True)
    has_metrics = METRICS_YAML.is_file()
    if has_metrics:
        shutil.copyfile(METRICS_YAML, config / "metrics.yaml")
    path = config / "config.properties"
    path.write_text(properties(settings, root, has_metrics), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    """Print a config.properties: ``--plain`` for deploy/kubernetes, else the one --kserve-layout writes."""
    cli = argparse.ArgumentParser(prog="python -m handlers.kserve_layout", description=main.__doc__)
    cli.add_argument("--plain", action="store_true", help="for the plain Deployment (deploy/kubernetes)")
    cli.add_argument("--name", default="inspection")
    cli.add_argument("--version", default="1.0")
    cli.add_argument("--batch-size", type=int, default=8)
    cli.add_argument("--max-batch-delay", type=int, default=50)
    cli.add_argument("--workers", type=int, default=1)
    cli.add_argument("--response-timeout", type=int, default=120)
    cli.add_argument("--root", default=MOUNT, help=f"where the layout is mounted (default {MOUNT})")
    args = cli.parse_args(argv)
    settings = ServingSettings(
        args.name, args.version, args.batch_size, args.max_batch_delay, args.workers, args.response_timeout
    )
    sys.stdout.write(properties(settings, args.root, METRICS_YAML.is_file(), kserve=not args.plain))


if __name__ == "__main__":
    main()
