"""KServe's v1 and v2 (Open Inference) protocols, spoken by the handler for every request of a batch.

TorchServe's own KServe envelopes (``service_envelope=kserve|kservev2``) read only request 0
of a batch and drop v2 ``parameters`` (pytorch/serve #2158; ``ts/torch_handler/request_envelope/``).
Here each KServe request is unfolded into one plain request row per image, the rows of the
whole batch go through the handler together, and the answers are folded back into one
protocol-shaped answer per request: ``{"predictions": [...]}`` (v1), ``{"model_name", "id",
"outputs"}`` (v2: one BYTES output per field of the plain answer, ``predictions``, ``explanations``
and the rest, each holding one JSON string per image), or ``{"error": ...}`` with that request's
4xx. Requests that are not KServe pass through untouched.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from ts.torch_handler.request_envelope.base import BaseEnvelope

from .errors import RequestError, bad_request
from .payload import IMAGE_FIELD

logger = logging.getLogger(__name__)

PLAIN, V1, V2 = "plain", "v1", "v2"
MAX_IMAGES_PER_REQUEST = 64  # bounds the decoded images one request can queue in a worker
V1_KEYS = ("instances", "parameters")
V2_KEYS = ("id", "inputs", "outputs", "parameters", "model_name", "model_version")  # KServe's client sends the name
# Open Inference Protocol parameters that describe the tensor, not an explanation option.
V2_TENSOR_PARAMETERS = ("content_type",)


@dataclass
class Incoming:
    """One request of the batch: its protocol and where its image rows are."""

    protocol: str
    first: int = 0
    count: int = 0
    refusal: RequestError | None = None
    request_id: str | None = None
    input_name: str = "data"
    explain: bool = False


def _json_object(row: dict[str, Any]) -> dict[str, Any] | None:
    """The row's body as a JSON object, if it is one (TorchServe decodes only application/json)."""
    body = row.get("body")
    if isinstance(body, (bytes, bytearray)) and bytes(body[:64]).lstrip()[:1] == b"{":
        try:
            body = json.loads(bytes(body))
        except (ValueError, RecursionError):
            return None  # not ours to judge: the plain path answers malformed JSON
    elif isinstance(body, str) and body.lstrip()[:1] == "{":
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return None
    return body if isinstance(body, dict) else None


def protocol_of(body: dict[str, Any] | None) -> str:
    """v1 for ``{"instances": ...}``, v2 for ``{"inputs": ...}``, otherwise a plain request."""
    if body is None:
        return PLAIN
    if "instances" in body:
        return V1
    return V2 if "inputs" in body else PLAIN


def _options(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be a JSON object of options, not {type(value).__name__}")
    return dict(value)


def _unknown(body: dict[str, Any], allowed: tuple[str, ...], protocol: str) -> None:
    unknown = [key for key in body if key not in allowed]
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r} in a KServe {protocol} request; fields: {', '.join(allowed)}")


def _count(images: int) -> None:
    if images == 0:
        raise bad_request("the request holds no image")
    if images > MAX_IMAGES_PER_REQUEST:
        raise bad_request(f"{images} images in one request, at most {MAX_IMAGES_PER_REQUEST}: split it")


def _v1_instance(instance: Any, shared: dict[str, Any], index: int) -> dict[str, Any]:
    """One v1 instance as a plain JSON body: a base64 string, ``{"b64": ...}`` or ``{"data": ..., options}``."""
    if isinstance(instance, str):
        return {**shared, IMAGE_FIELD: instance}
    if not isinstance(instance, dict):
        raise bad_request(f"instance {index} must be a base64 string or an object, not {type(instance).__name__}")
    fields = dict(instance)
    if "b64" in fields:
        if IMAGE_FIELD in fields:
            raise bad_request(f"instance {index} has both 'b64' and '{IMAGE_FIELD}': send the image once")
        fields[IMAGE_FIELD] = fields.pop("b64")
    image = fields.get(IMAGE_FIELD)
    if isinstance(image, dict) and set(image) == {"b64"}:
        fields[IMAGE_FIELD] = image["b64"]
    return {**shared, **fields}


def v1_rows(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The plain JSON bodies of a v1 request, one per instance (request ``parameters`` under each)."""
    _unknown(body, V1_KEYS, V1)
    instances = body["instances"]
    if not isinstance(instances, list):
        raise bad_request(f"'instances' must be a list, not {type(instances).__name__}")
    _count(len(instances))
    shared = _options(body.get("parameters"), "'parameters'")
    return [_v1_instance(instance, shared, i) for i, instance in enumerate(instances)]


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [item for element in data for item in _flat(element)]
    return [data]


def v2_rows(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The input's name and the plain JSON bodies of a v2 request, one per BYTES element."""
    _unknown(body, V2_KEYS, V2)
    inputs = body["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad_request("'inputs' must hold exactly one input object: the images, datatype BYTES")
    tensor = inputs[0]
    name = str(tensor.get("name", IMAGE_FIELD))
    if tensor.get("datatype") != "BYTES":
        raise bad_request(
            f"input {name!r} has datatype {tensor.get('datatype')!r}: send images as datatype BYTES, "
            "one base64 string per image"
        )
    images = _flat(tensor.get("data"))
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise bad_request(f"input {name!r} needs a 'shape', a list of integers such as [{len(images)}]")
    size = 1
    for n in shape:
        size *= n
    if size != len(images):
        raise bad_request(f"input {name!r} has shape {shape} but {len(images)} elements")
    _count(len(images))
    for i, image in enumerate(images):
        if not isinstance(image, str):
            raise bad_request(f"element {i} of input {name!r} must be a base64 string, not {type(image).__name__}")
    request_options = _options(body.get("parameters"), "'parameters'")
    input_options = _options(tensor.get("parameters"), f"'parameters' of input {name!r}")
    for key in V2_TENSOR_PARAMETERS:
        request_options.pop(key, None)
        input_options.pop(key, None)
    shared = {**request_options, **input_options}
    return name, [{**shared, IMAGE_FIELD: image} for image in images]


class ProxyContext:
    """TorchServe's Context seen through the unfolded rows: headers and request ids come from
    each row's request; statuses and content types are kept per row until the answers are folded."""

    def __init__(self, context: Any, owners: list[int]) -> None:
        self._context = context
        self._owners = owners
        self.statuses: dict[int, tuple[int, str]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def owner(self, idx: int) -> int:
        """The real request of unfolded row ``idx``."""
        return self._owners[idx]

    def get_all_request_header(self, idx: int) -> dict[str, Any]:
        return self._context.get_all_request_header(self._owners[idx])

    def get_request_header(self, idx: int, key: str) -> Any:
        return self._context.get_request_header(self._owners[idx], key)

    def get_request_id(self, idx: int = 0) -> Any:
        return self._context.get_request_id(self._owners[idx])

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        """Every folded answer is JSON: the fold sets it on the real request."""


def owner_of(context: Any, idx: int) -> int:
    """The index of the request row ``idx`` of a batch came from: itself unless a KServe request was unfolded."""
    return context.owner(idx) if isinstance(context, ProxyContext) else idx


@dataclass
class Batch:
    """A TorchServe batch with its KServe requests unfolded into one plain row per image."""

    rows: list[dict[str, Any]]
    context: Any
    requests: list[Incoming] = field(default_factory=list)

    @property
    def unfolded(self) -> bool:
        return isinstance(self.context, ProxyContext)

    def fold(self, outputs: list[bytes], real: Any, max_bytes: int) -> list[bytes]:
        """One answer per request of the real batch, statuses set on the real context."""
        if not isinstance(self.context, ProxyContext):
            return outputs
        statuses = self.context.statuses
        answers = []
        for idx, request in enumerate(self.requests):
            rows = range(request.first, request.first + request.count)
            if request.protocol == PLAIN:
                (row,) = rows
                refusal, body = None, outputs[row]
                if row in statuses:
                    real.set_response_status(*statuses[row], idx)
            else:
                refusal, body = self._protocol_answer(request, [(statuses.get(r), outputs[r]) for r in rows], real)
                if refusal is None and len(body) > max_bytes:
                    refusal = RequestError(
                        400,
                        f"the answer would be {len(body)} bytes, over this model's limit of {max_bytes} "
                        "(max_response_bytes); send fewer images per request or ask for smaller explanations",
                    )
            if refusal is not None:
                real.set_response_status(refusal.status, refusal.phrase, idx)
                body = json.dumps(refusal.body(), separators=(",", ":")).encode("utf-8")
            real.set_response_content_type(idx, "application/json")
            answers.append(body)
        return answers

    @staticmethod
    def _protocol_answer(
        request: Incoming, items: list[tuple[tuple[int, str] | None, bytes]], real: Any
    ) -> tuple[RequestError | None, bytes]:
        """The v1 or v2 answer of one request, or the refusal of its first image that failed."""
        if request.refusal is not None:
            return request.refusal, b""
        for k, (status, body) in enumerate(items):
            if status is not None and status[0] >= 400:
                where = f"instance {k}" if request.protocol == V1 else f"element {k} of input {request.input_name!r}"
                return RequestError(status[0], f"{where}: {json.loads(body)['error']}"), b""
        bodies = [body for _, body in items]
        if request.protocol == V1:
            key = b"explanations" if request.explain else b"predictions"
            return None, b'{"' + key + b'":[' + b",".join(bodies) + b"]}"
        answers = [json.loads(body) for body in bodies]
        names = list(dict.fromkeys(name for answer in answers for name in answer))
        model = (getattr(real, "manifest", None) or {}).get("model", {})
        response = {
            "model_name": real.model_name,
            "model_version": model.get("modelVersion"),
            "id": request.request_id,
            "outputs": [
                {
                    "name": name,
                    "datatype": "BYTES",
                    "shape": [len(answers)],
                    "data": [json.dumps(answer.get(name), separators=(",", ":")) for answer in answers],
                }
                for name in names
            ],
        }
        return None, json.dumps(response, separators=(",", ":")).encode("utf-8")


_envelope_warned = False
_FRAMES_TO_ENVELOPE = 6  # handle() is called by the envelope's handle(): a few frames up at most


def _envelope_in_front() -> bool:
    """True when TorchServe's request envelope called the handler (its ``handle`` is up the stack)."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(_FRAMES_TO_ENVELOPE):
        if frame is None:
            return False
        if isinstance(frame.f_locals.get("self"), BaseEnvelope):
            return True
        frame = frame.f_back
    return False


def _warn_if_enveloped() -> None:
    """Say once, loudly, when TorchServe's own KServe envelope sits in front of the handler."""
    global _envelope_warned
    if not _envelope_warned and _envelope_in_front():
        _envelope_warned = True
        logger.error(
            "TorchServe's service envelope is on (service_envelope, or TS_SERVICE_ENVELOPE with "
            "enable_envvars_config=true): it reads only request 0 of each batch and TorchServe cannot send "
            "what it makes of this handler's answers. This handler speaks KServe v1/v2 itself: unset "
            "service_envelope and keep enable_envvars_config off (python -m handlers.archive --kserve-layout "
            "writes such a config)"
        )


def unfold(data: list[dict[str, Any]], context: Any) -> Batch:
    """The batch with each KServe request replaced by one plain row per image (unchanged if none is)."""
    _warn_if_enveloped()
    bodies = [_json_object(row) if isinstance(row, dict) else None for row in data]
    protocols = [protocol_of(body) for body in bodies]
    if all(protocol == PLAIN for protocol in protocols):
        return Batch(list(data), context)
    rows: list[dict[str, Any]] = []
    owners: list[int] = []
    requests: list[Incoming] = []
    for idx, (row, body, protocol) in enumerate(zip(data, bodies, protocols, strict=True)):
        request = Incoming(protocol, first=len(rows), explain=context.get_request_header(idx, "explain") == "True")
        if protocol == PLAIN:
            request_rows = [row]
        else:
            assert body is not None
            try:
                if protocol == V1:
                    request_rows = [{"body": fields} for fields in v1_rows(body)]
                else:
                    request.input_name, bodies_v2 = v2_rows(body)
                    request_rows = [{"body": fields} for fields in bodies_v2]
                    given_id = body.get("id")
                    request.request_id = given_id if isinstance(given_id, str) else context.get_request_id(idx)
            except RequestError as error:
                request.refusal, request_rows = error, []
        request.count = len(request_rows)
        rows.extend(request_rows)
        owners.extend([idx] * len(request_rows))
        requests.append(request)
    logger.info(
        "KServe batch of %d requests (%s), %d images",
        len(data),
        ", ".join(f"{protocols.count(p)} {p}" for p in (V1, V2, PLAIN) if p in protocols),
        len(rows),
    )
    return Batch(rows, ProxyContext(context, owners), requests)
