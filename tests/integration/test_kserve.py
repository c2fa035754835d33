"""TorchServe started exactly as KServe's pytorch runtime starts it, answering v1 and v2 in batches.

The storage comes from ``python -m handlers.archive --kserve-layout``; the server runs with
KServe's flags (``--start --model-store DIR/model-store --ts-config DIR/config/config.properties
--disable-token-auth --enable-model-api``, no ``--models``, no ``--ncs``) and KServe's
environment (``TS_SERVICE_ENVELOPE=kserve`` or ``kservev2``). The helper adds only
``--foreground``, to own the process group, and moves the addresses to free loopback ports.
Eight concurrent requests on every KServe route must form one batch, and each answer must
equal the handler's plain answer for the same image and options.
"""

from __future__ import annotations

import base64
import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from handlers.archive import main as archive_main
from handlers.kserve_layout import MOUNT
from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import load_context, run_batch, unpack_mar
from handlers.testing.torchserve import TorchServe

pytestmark = pytest.mark.integration

BATCH_DELAY_MS = 3000  # long enough for the eight concurrent requests to form one batch
KSERVE_ARGS = ("--disable-token-auth", "--enable-model-api")
TOLERANCE = 2e-3  # answers are rounded (4 significant digits, 3 decimals); a batch may round differently


@pytest.fixture(scope="module", params=["kserve", "kservev2"])
def kserve(request, tmp_path_factory):
    """A layout written by the archive CLI, served as KServe serves it with TS_SERVICE_ENVELOPE set."""
    root = tmp_path_factory.mktemp(f"layout-{request.param}")
    archive_main(
        [
            *("inspection", "--max-batch-delay", str(BATCH_DELAY_MS)),
            *("--kserve-layout", str(root), "--kserve-root", str(root)),
        ]
    )
    server = TorchServe(
        root / "model-store",
        {"inspection": "inspection.mar"},
        root / "config",  # so the config TorchServe reads is DIR/config/config.properties
        base_config=root / "config" / "config.properties",
        env={"TS_SERVICE_ENVELOPE": request.param},
        args=KSERVE_ARGS,
        register=False,
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> GradCamHandler:
    """The handler in-process, on a MAR built the same way: the plain answers to compare with."""
    root = tmp_path_factory.mktemp("reference")
    archive_main(["inspection", "--export-path", str(root), "--no-check"])
    handler = GradCamHandler()
    handler.initialize(load_context(unpack_mar(root / "inspection.mar", root / "model"), "inspection"))
    return handler


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def plain(handler: GradCamHandler, image: str, explain: bool = False, **options: Any) -> dict:
    statuses, bodies, _ = run_batch(handler, [{"body": {"data": image, **options}}], [{"explain": str(explain)}])
    assert statuses == [200]
    return bodies[0]


def close(got: Any, expected: Any) -> bool:
    """Equal JSON, numbers within TOLERANCE."""
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and got.keys() == expected.keys()
            and all(close(got[k], v) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(close, got, expected))
    if isinstance(expected, float) and not isinstance(got, bool) and isinstance(got, (int, float)):
        return math.isclose(got, expected, abs_tol=TOLERANCE)
    return got == expected


def v2_answers(body: dict) -> list[dict]:
    """The per-image answers of a v2 response: its BYTES outputs (one per answer field) zipped back."""
    outputs = body["outputs"]
    assert {"predictions", "explanations"} <= {output["name"] for output in outputs}
    for output in outputs:
        assert output["datatype"] == "BYTES" and output["shape"] == [len(outputs[0]["data"])]
    return [
        {output["name"]: json.loads(output["data"][k]) for output in outputs} for k in range(len(outputs[0]["data"]))
    ]


def test_started_as_kserve_starts_it(kserve):
    assert kserve.process is not None
    command = kserve.process.args
    assert command[1:3] == ["--start", "--foreground"]
    assert command[3:] == [
        *KSERVE_ARGS,
        "--model-store",
        str(kserve.model_store),
        "--ts-config",
        str(kserve.model_store.parent / "config" / "config.properties"),
    ]
    assert kserve.env["TS_SERVICE_ENVELOPE"] in ("kserve", "kservev2")
    metrics = requests.get(f"{kserve.url('metrics')}/metrics", timeout=10)
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


def test_concurrent_v1_and_v2_requests_form_one_batch_and_each_is_answered(kserve, reference, samples):
    s = {kind: b64(data) for kind, data in samples.items()}
    url = kserve.url()
    model = "inspection"
    v2_input = {"name": "images", "datatype": "BYTES"}
    calls: list[tuple[str, dict]] = [
        (f"/v1/models/{model}:predict", {"instances": [{"data": s["scratch"], "target": "dent"}, {"b64": s["ok"]}]}),
        (f"/v1/models/{model}:explain", {"instances": [{"data": s["dent"], "method": "guided_gradcam"}]}),
        (
            f"/v2/models/{model}/infer",
            {
                "id": "r3",
                "inputs": [{**v2_input, "shape": [2], "data": [s["scratch+dent"], s["scratch"]]}],
                "parameters": {"method": "cam", "top_k": 2},
            },
        ),
        (
            f"/v2/models/{model}/explain",
            {"inputs": [{**v2_input, "shape": [1], "data": [s["ok"]], "parameters": {"target": "scratch"}}]},
        ),
        # What KServe's wrapper in the torchserve-kfs image sends: the protocol's JSON to /predictions.
        (f"/predictions/{model}", {"instances": [{"data": s["scratch+dent"], "top_k_explanations": 2}]}),
        (
            f"/explanations/{model}",
            {
                "id": "r6",
                "inputs": [{**v2_input, "shape": [1], "data": [s["dent"]]}],
                "parameters": {"method": "hirescam"},
            },
        ),
        (f"/v1/models/{model}:predict", {"instances": [{"data": s["ok"]}, {"data": s["dent"], "method": "lime"}]}),
        (f"/v2/models/{model}/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.5]}]}),
    ]
    before = kserve.log().count("KServe batch of 8 requests")
    start = threading.Barrier(len(calls))

    def send(call: tuple[str, dict]) -> requests.Response:
        start.wait()
        return requests.post(url + call[0], json=call[1], timeout=120)

    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(send, calls))
    assert kserve.log().count("KServe batch of 8 requests") == before + 1, "the eight requests did not form one batch"
    assert [a.status_code for a in answers] == [200] * 6 + [400, 400]
    bodies = [a.json() for a in answers]

    expected_v1 = [plain(reference, s["scratch"], target="dent"), plain(reference, s["ok"])]
    assert close(bodies[0], {"predictions": expected_v1})
    assert close(bodies[1], {"explanations": [plain(reference, s["dent"], True, method="guided_gradcam")]})
    assert bodies[2]["id"] == "r3" and bodies[2]["model_name"] == model
    expected_v2 = [plain(reference, s[kind], method="cam", top_k=2) for kind in ("scratch+dent", "scratch")]
    assert close(v2_answers(bodies[2]), expected_v2)
    assert bodies[3]["id"]  # TorchServe's request id when the request gives none
    assert close(v2_answers(bodies[3]), [plain(reference, s["ok"], True, target="scratch")])
    assert close(bodies[4], {"predictions": [plain(reference, s["scratch+dent"], top_k_explanations=2)]})
    assert bodies[5]["id"] == "r6"
    assert close(v2_answers(bodies[5]), [plain(reference, s["dent"], True, method="hirescam")])
    assert set(bodies[6]) == {"error"} and bodies[6]["error"].startswith("instance 1: option 'method'")
    assert set(bodies[7]) == {"error"} and "datatype BYTES" in bodies[7]["error"]
    assert "service envelope is on" not in kserve.log()  # TS_SERVICE_ENVELOPE was ignored, as configured


def test_layout_config_is_the_one_served(kserve):
    """The snapshot's batching reached TorchServe (KServe passes no --models: the config loads the model)."""
    described = requests.get(f"{kserve.url('management')}/models/inspection", timeout=10).json()[0]
    assert (described["batchSize"], described["maxBatchDelay"]) == (8, BATCH_DELAY_MS)
    assert described["minWorkers"] == described["maxWorkers"] == 1
    assert Path(kserve.model_store, "inspection.mar").is_file()


def test_plain_deployment_config_serves_the_layout(tmp_path, samples):
    """deploy/kubernetes: TorchServe with the ConfigMap's config, started as the Deployment starts it."""
    archive_main(["inspection", "--no-check", "--workers", "2", "--kserve-layout", str(tmp_path)])
    configmap = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "configmap.yaml"
    config = tmp_path / "config" / "config.properties"
    text = yaml.safe_load(configmap.read_text())["data"]["config.properties"]
    config.write_text(text.replace(MOUNT, str(tmp_path)))  # the layout is mounted here, not at /mnt/models
    server = TorchServe(
        *(tmp_path / "model-store", {"inspection": "inspection.mar"}, tmp_path / "config"),
        base_config=config,
        args=(),
        register=False,
    )
    with server:
        assert requests.get(f"{server.url()}/ping", timeout=10).json() == {"status": "Healthy"}
        answer = requests.post(f"{server.url()}/predictions/inspection", data=samples["dent"], timeout=60)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "dent"
        v1 = requests.post(
            f"{server.url()}/v1/models/inspection:predict", json={"instances": [b64(samples["ok"])]}, timeout=60
        )
        assert v1.status_code == 200 and v1.json()["predictions"][0]["predictions"][0]["label"] == "ok"
        workers = requests.get(f"{server.url('management')}/models/inspection", timeout=10).json()[0]["workers"]
        assert len(workers) == 2
