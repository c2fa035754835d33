"""deploy/: every manifest validates against real schemas, and the pieces agree with each other.

No cluster is reachable here, so nothing is applied: core objects are validated by the
``kubernetes`` package's models, the InferenceService by the kserve 0.21.0 SDK's recorded models
(handlers/testing/k8s_schema.py explains why recorded).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers.kserve_layout import METRICS_YAML, MOUNT, PLAIN_CONFIG, ServingSettings, properties
from handlers.testing.k8s_schema import SchemaChecker

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))
POD = {"cpu": "2", "memory": "4Gi"}  # what tests/test_kserve_layout.py sizes the frontend against
SETTINGS = ServingSettings("inspection", "1.0", batch_size=8, max_batch_delay=50, workers=2, response_timeout=120)


def load(relative: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / relative).read_text())


@pytest.fixture(scope="module")
def checker() -> SchemaChecker:
    return SchemaChecker()


def test_recorded_kserve_models_come_from_the_kserve_wheel(checker):
    assert checker.source == "kserve-0.21.0-py3-none-any.whl"
    assert {"V1beta1InferenceService", "V1beta1PredictorSpec", "V1beta1ModelSpec"} <= set(checker.models)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_validates(checker, path):
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents
    for document in documents:
        assert checker.problems(document) == []


def _broken(document: dict[str, Any], edit) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    edit(changed)
    return changed


@pytest.mark.parametrize(
    ("relative", "edit", "expected"),
    [
        ("kserve/inferenceservice.yaml", lambda d: d["spec"]["predictor"]["model"].update(storageURI="x"), "unknown"),
        ("kserve/inferenceservice.yaml", lambda d: d["spec"]["predictor"].update(minReplicas="1"), "expected int"),
        ("kserve/inferenceservice.yaml", lambda d: d["spec"].pop("predictor"), "missing required field 'predictor'"),
        ("kserve/inferenceservice.yaml", lambda d: d["metadata"]["annotations"].update(x=8), "valid string"),
        (
            "kserve/inferenceservice.yaml",
            lambda d: d["spec"]["predictor"]["model"]["resources"].update(limit={}),
            "Extra inputs",
        ),
        (
            "kubernetes/deployment.yaml",
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(port=8080),
            "Extra inputs",
        ),
        ("kubernetes/hpa.yaml", lambda d: d["spec"].pop("scaleTargetRef"), "scaleTargetRef"),
        ("kubernetes/service.yaml", lambda d: d.update(apiVersion="v2"), "unsupported apiVersion/kind"),
    ],
)
def test_the_checks_catch_mistakes(checker, relative, edit, expected):
    problems = checker.problems(_broken(load(relative), edit))
    assert problems and any(expected in problem for problem in problems), problems


def test_configmap_is_the_plain_config_of_the_layout():
    config = load("kubernetes/configmap.yaml")["data"]["config.properties"]
    assert config == properties(SETTINGS, kserve=False, metrics_yaml=METRICS_YAML.is_file())


def test_inference_services_serve_the_layout_with_pytorch_and_scale():
    for name, protocol in (("inferenceservice.yaml", "v1"), ("inferenceservice-hpa-v2.yaml", "v2")):
        service = load(f"kserve/{name}")
        predictor = service["spec"]["predictor"]
        model = predictor["model"]
        assert model["modelFormat"]["name"] == "pytorch" and model["runtime"] == "kserve-torchserve"
        assert model["protocolVersion"] == protocol and model["storageUri"].startswith("s3://")
        assert model["resources"]["requests"] == model["resources"]["limits"] == POD
        assert 1 <= predictor["minReplicas"] < predictor["maxReplicas"]
    knative = load("kserve/inferenceservice.yaml")["metadata"]["annotations"]
    in_flight = SETTINGS.workers * SETTINGS.batch_size  # one full batch per worker
    assert knative["autoscaling.knative.dev/metric"] == "concurrency"
    assert knative["autoscaling.knative.dev/target"] == str(in_flight)
    raw = load("kserve/inferenceservice-hpa-v2.yaml")["metadata"]["annotations"]
    assert raw["serving.kserve.io/autoscalerClass"] == "hpa" and raw["serving.kserve.io/metrics"] == "cpu"


def test_plain_deployment_pieces_agree():
    deployment = load("kubernetes/deployment.yaml")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    command = container["command"]
    assert command[command.index("--ts-config") + 1] == PLAIN_CONFIG
    assert command[command.index("--model-store") + 1] == f"{MOUNT}/model-store"
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts == {"models": MOUNT, "config": str(Path(PLAIN_CONFIG).parent)}
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == load("kubernetes/configmap.yaml")["metadata"]["name"]
    assert container["resources"]["requests"] == container["resources"]["limits"] == POD
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    settings = read_properties_text(load("kubernetes/configmap.yaml")["data"]["config.properties"])
    assert settings["inference_address"].endswith(f":{ports['http']}")
    assert settings["metrics_address"].endswith(f":{ports['metrics']}")
    assert settings["management_address"].startswith("http://127.0.0.1:")  # in-pod only
    snapshot = json.loads(settings["model_snapshot"])["models"]["inspection"]["1.0"]
    assert (snapshot["batchSize"], snapshot["maxWorkers"]) == (SETTINGS.batch_size, SETTINGS.workers)

    service = load("kubernetes/service.yaml")
    assert service["spec"]["selector"] == labels
    assert {port["targetPort"] for port in service["spec"]["ports"]} == set(ports)
    hpa = load("kubernetes/hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    policy = load("kubernetes/networkpolicy.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"] == labels
    allowed = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert allowed == set(ports.values())  # inference and metrics, nothing else


def test_kserve_network_policy_selects_the_raw_deployment_pods():
    policy = load("kserve/networkpolicy.yaml")
    name = load("kserve/inferenceservice-hpa-v2.yaml")["metadata"]["name"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": name}
    assert {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]} == {8080, 8082}


def read_properties_text(text: str) -> dict[str, str]:
    """key=value lines of a properties text (comments skipped)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}
