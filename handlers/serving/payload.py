"""Find the image and the option fields in one TorchServe request row.

A row is what TorchServe hands the handler for one request: ``{"body": ...}`` for a raw
body (bytes, text, or a dict TorchServe already decoded from JSON) or one key per
multipart form field. The image may be raw bytes, base64 text, or the ``data`` field of
a JSON object or form; everything else in a JSON object or form is an option.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import bad_request

IMAGE_FIELD = "data"


@dataclass(frozen=True)
class Payload:
    """The image bytes of a request and its option fields (raw, unvalidated)."""

    image: bytes
    fields: dict[str, Any] = field(default_factory=dict)


def _b64decode(text: str, what: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL, as browsers produce
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{what} is not valid base64 (send the raw image bytes, or base64 text)") from None


def _from_object(body: Mapping[str, Any], what: str) -> Payload:
    if IMAGE_FIELD not in body:
        raise bad_request(f"{what} has no '{IMAGE_FIELD}' field: put the base64-encoded image there")
    data = body[IMAGE_FIELD]
    if isinstance(data, (bytes, bytearray)):
        image = bytes(data)
    elif isinstance(data, str):
        image = _b64decode(data, f"'{IMAGE_FIELD}' of the {what}")
    else:
        raise bad_request(f"'{IMAGE_FIELD}' of the {what} must be a base64 string, not {type(data).__name__}")
    fields = {key: value for key, value in body.items() if key != IMAGE_FIELD}
    return Payload(image, fields)


def _parse_json(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise bad_request(f"request body looks like JSON but does not parse: {error}") from None


def extract_payload(row: Mapping[str, Any]) -> Payload:
    """The image and option fields of one request row, or a 400 RequestError."""
    if "body" not in row:  # multipart/form-data or urlencoded: one key per field
        if IMAGE_FIELD not in row and any(str(key).lstrip().startswith("{") for key in row):
            raise bad_request("JSON was sent as a form: add the header 'Content-Type: application/json'")
        return _from_object(row, "form")
    body = row["body"]
    if isinstance(body, (bytes, bytearray)) and bytes(body[:64]).lstrip()[:1] in (b"{", b"["):
        body = _parse_json(bytes(body))  # JSON sent with a content type TorchServe didn't decode
    elif isinstance(body, str) and body.lstrip()[:1] in ("{", "["):
        body = _parse_json(body)
    if isinstance(body, dict):
        return _from_object(body, "JSON body")
    if isinstance(body, (bytes, bytearray)):
        return Payload(bytes(body))
    if isinstance(body, str):
        return Payload(_b64decode(body, "text body"))
    raise bad_request(f"JSON body must be an object with a '{IMAGE_FIELD}' field, not {type(body).__name__}")
