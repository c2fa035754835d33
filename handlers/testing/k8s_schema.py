"""Offline schema checks for the manifests in deploy/: Kubernetes objects and KServe's InferenceService.

Core objects (Deployment, Service, HorizontalPodAutoscaler, NetworkPolicy, ConfigMap) are
validated by the ``kubernetes`` package's models (pydantic, unknown fields forbidden). The
InferenceService is checked against the field types of the ``kserve`` SDK's generated models,
recorded in ``kserve_models.json`` by ``python -m handlers.testing.k8s_schema WHEEL``: the SDK
itself cannot be installed next to our pins (kserve 0.21.0 requires psutil 5.9.8), so its models
are read from the wheel once, without importing the package, and every core type they refer to
(``V1Container``, ``V1ResourceRequirements``, ...) is again checked by the ``kubernetes`` models.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import inspect
import json
import re
import sys
import tempfile
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client.models as core
import pydantic

SNAPSHOT = Path(__file__).with_name("kserve_models.json")
ROOT_TYPE = "V1beta1InferenceService"
KINDS = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
    ("serving.kserve.io/v1beta1", "InferenceService"): ROOT_TYPE,
}
_REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")
_LIST = re.compile(r"list\[(.+)\]")
_DICT = re.compile(r"dict\(str, (.+)\)")
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
    "object": (object,),
}


def _fake_six() -> types.ModuleType:
    """The few names of ``six`` the generated models use (not installed here)."""
    six = types.ModuleType("six")
    six.iteritems = lambda mapping: iter(mapping.items())  # type: ignore[attr-defined]
    six.PY3 = True  # type: ignore[attr-defined]
    six.string_types = (str,)  # type: ignore[attr-defined]
    six.integer_types = (int,)  # type: ignore[attr-defined]
    moves = types.ModuleType("six.moves")
    moves.http_client = http.client  # type: ignore[attr-defined]
    six.moves = moves  # type: ignore[attr-defined]
    return six


def record(wheel: Path) -> dict[str, Any]:
    """Field types (JSON name -> type) and required fields of every model reachable from the InferenceService."""
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tmp)
        package = types.ModuleType("kserve")  # its __init__ imports the model server: skip it
        package.__path__ = [str(Path(tmp) / "kserve")]
        saved = {name: sys.modules.get(name) for name in ("kserve", "six", "six.moves")}
        sys.modules.update({"kserve": package, "six": _fake_six()})
        sys.modules["six.moves"] = sys.modules["six"].moves
        try:
            models = importlib.import_module("kserve.models")
            found: dict[str, Any] = {}
            pending = [ROOT_TYPE]
            while pending:
                name = pending.pop()
                cls = getattr(models, name, None)
                if name in found or cls is None:
                    continue
                fields = {cls.attribute_map[attr]: kind for attr, kind in cls.openapi_types.items()}
                setters = "".join(inspect.getsource(getattr(cls, attr).fset) for attr in cls.openapi_types)
                required = sorted(cls.attribute_map[attr] for attr in _REQUIRED.findall(setters))
                found[name] = {"fields": fields, "required": required}
                pending += [_element(kind) for kind in fields.values()]
        finally:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return {"source": wheel.name, "sha256": digest, "models": dict(sorted(found.items()))}


def _element(kind: str) -> str:
    for pattern in (_LIST, _DICT):
        match = pattern.fullmatch(kind)
        if match:
            return _element(match.group(1))
    return kind


class SchemaChecker:
    """Problems of one manifest document against the recorded and the installed models."""

    def __init__(self, snapshot: Path = SNAPSHOT) -> None:
        recorded = json.loads(snapshot.read_text())
        self.source = recorded["source"]
        self.models: dict[str, Any] = recorded["models"]

    def problems(self, document: dict[str, Any]) -> list[str]:
        """Every problem found, each as ``path: what``; empty when the document validates."""
        kind = KINDS.get((document.get("apiVersion", ""), document.get("kind", "")))
        if kind is None:
            return [f"$: unsupported apiVersion/kind {document.get('apiVersion')}/{document.get('kind')}"]
        return list(self._check(document, kind, "$"))

    def _check(self, value: Any, kind: str, path: str) -> Iterator[str]:
        match = _LIST.fullmatch(kind)
        if match:
            if not isinstance(value, list):
                yield f"{path}: expected a list ({kind})"
                return
            for i, item in enumerate(value):
                yield from self._check(item, match.group(1), f"{path}[{i}]")
            return
        match = _DICT.fullmatch(kind)
        if match:
            if not isinstance(value, dict):
                yield f"{path}: expected a mapping ({kind})"
                return
            for key, item in value.items():
                yield from self._check(item, match.group(1), f"{path}.{key}")
            return
        if kind in _PRIMITIVES:
            if not isinstance(value, _PRIMITIVES[kind]) or (kind != "bool" and isinstance(value, bool)):
                yield f"{path}: expected {kind}, got {type(value).__name__} {value!r}"
            return
        if kind in self.models:
            yield from self._check_recorded(value, kind, path)
            return
        model = getattr(core, kind, None)
        if model is None:
            yield f"{path}: type {kind} is in neither the kserve record nor the kubernetes models"
            return
        try:
            model.model_validate(value)
        except pydantic.ValidationError as error:
            for item in error.errors():
                where = ".".join(str(part) for part in item["loc"])
                yield f"{path}.{where}: {item['msg']} ({kind})"

    def _check_recorded(self, value: Any, kind: str, path: str) -> Iterator[str]:
        if not isinstance(value, dict):
            yield f"{path}: expected an object ({kind})"
            return
        fields = self.models[kind]["fields"]
        for key in self.models[kind]["required"]:
            if key not in value:
                yield f"{path}: missing required field {key!r} ({kind})"
        for key, item in value.items():
            if key not in fields:
                yield f"{path}.{key}: unknown field of {kind}"
            else:
                yield from self._check(item, fields[key], f"{path}.{key}")


def main(argv: list[str] | None = None) -> None:
    """Record the kserve wheel's model fields into kserve_models.json."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m handlers.testing.k8s_schema kserve-VERSION-py3-none-any.whl")
    recorded = record(Path(args[0]))
    SNAPSHOT.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}: {len(recorded['models'])} models from {recorded['source']}")


if __name__ == "__main__":
    main()
