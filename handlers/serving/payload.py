"""Find the image and the option fields in one TorchServe request row.

A row is what TorchServe hands the handler for one request: ``{"body": ...}`` for a raw
body (bytes, text, or a dict TorchServe already decoded from JSON) or one key per
multipart form field. The image may be raw bytes, base64 text, or the ``data`` field of
a JSON object or form; everything else in a JSON object or form is an option. Base64 is
recognised wherever it arrives (a raw body sent with ``curl -T file.b64``, a form field),
so every usual way of sending an image works or is told exactly what to change.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import RequestError, bad_request

IMAGE_FIELD = "data"
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_\r\n"
_URL_SAFE = str.maketrans("-_", "+/")
_URLENCODED = "application/x-www-form-urlencoded"
_UTF8_BOM = b"\xef\xbb\xbf"  # some editors and Windows tools start JSON files with it (RFC 8259 lets parsers skip it)
_SEND_RAW_HINT = (
    "send the file as the raw body (curl -T image.jpg URL, or curl --data-binary @image.jpg "
    "-H 'Content-Type: application/octet-stream' URL) or in a multipart field named "
    f"'{IMAGE_FIELD}' (curl -F {IMAGE_FIELD}=@image.jpg URL)"
)


@dataclass(frozen=True)
class Payload:
    """The image bytes of a request and its option fields (raw, unvalidated)."""

    image: bytes
    fields: dict[str, Any] = field(default_factory=dict)


def _b64decode(text: str, what: str, problem: str = "is not valid base64") -> bytes:
    if text.startswith("data:") and "," in text[:256]:  # a data URL, as browsers produce
        text = text.split(",", 1)[1]
    compact = "".join(text.split())
    if "-" in compact or "_" in compact:  # the URL-safe alphabet (RFC 4648 section 5), as JWT-style tools write it
        compact = compact.translate(_URL_SAFE)
    try:  # padding is often left off (URL-safe tools, JavaScript): restore it
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        raise bad_request(f"{what} {problem} (send the raw image bytes, or base64 text)") from None


def looks_like_base64(data: bytes) -> bool:
    """True for base64 text (or a data URL): no image format starts with or consists of those bytes."""
    head = data[:256].lstrip()
    if head.startswith(b"data:") and b"," in head:
        return True
    if head.translate(None, _BASE64_ALPHABET):  # binary images fail on their first bytes (magic numbers)
        return False
    return bool(data.strip()) and not data.translate(None, _BASE64_ALPHABET)


def _image_bytes(data: bytes, what: str) -> bytes:
    """Raw image bytes, or the decoded bytes when ``data`` is base64 text."""
    if looks_like_base64(data):  # latin-1: a data URL's payload may be raw bytes, which base64 then refuses
        return _b64decode(data.decode("latin-1"), what, "is neither an image file nor valid base64 text")
    return data


def _from_object(body: Mapping[str, Any], what: str) -> Payload:
    if IMAGE_FIELD not in body:
        raise bad_request(f"{what} has no '{IMAGE_FIELD}' field: put the image (raw or base64) there")
    data = body[IMAGE_FIELD]
    if isinstance(data, (bytes, bytearray)):
        image = _image_bytes(bytes(data), f"'{IMAGE_FIELD}' of the {what}")
    elif isinstance(data, str):
        if what == "form":  # urlencoded forms turn an unescaped '+' into a space; base64 has no spaces
            data = data.replace(" ", "+")
        image = _b64decode(data, f"'{IMAGE_FIELD}' of the {what}")
    else:
        raise bad_request(f"'{IMAGE_FIELD}' of the {what} must be a base64 string, not {type(data).__name__}")
    fields = {key: value for key, value in body.items() if key != IMAGE_FIELD}
    return Payload(image, fields)


def _parse_json(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise bad_request('request body is JSON nested too deeply: send a flat object {"data": ...}') from None
    except (UnicodeDecodeError, ValueError) as error:
        if "integer string conversion" in str(error):  # Python's int() digit limit, hit while parsing
            raise bad_request(
                "request body is JSON with a number of thousands of digits: no option takes one"
            ) from None
        raise bad_request(f"request body looks like JSON but does not parse: {str(error)[:200]}") from None


def _from_form(row: Mapping[str, Any], content_type: str) -> Payload:
    """A multipart or urlencoded form: the image in field 'data', options in the others."""
    if IMAGE_FIELD not in row:
        if any(str(key).lstrip().startswith("{") for key in row):
            raise bad_request("JSON was sent as a form: add the header 'Content-Type: application/json'")
        if content_type.startswith(_URLENCODED):
            raise RequestError(
                415,
                f"the body arrived as a urlencoded form ({_URLENCODED}, what curl --data-binary and -d send "
                f"by default), which mangles image bytes: {_SEND_RAW_HINT}",
            )
        raise bad_request(f"form has no '{IMAGE_FIELD}' field: {_SEND_RAW_HINT}")
    return _from_object(row, "form")


def extract_payload(row: Mapping[str, Any], content_type: str = "") -> Payload:
    """The image and option fields of one request row, or a 4xx RequestError.

    ``content_type`` is the request's Content-Type header, used only to explain refusals.
    """
    if "body" not in row:  # multipart/form-data or urlencoded: one key per field
        return _from_form(row, content_type.lower())
    body = row["body"]
    if isinstance(body, (bytes, bytearray)) and bytes(body[:64]).removeprefix(_UTF8_BOM).lstrip()[:1] in (b"{", b"["):
        body = _parse_json(bytes(body))  # JSON sent with a content type TorchServe didn't decode (json: BOM too)
    elif isinstance(body, str) and body.removeprefix("\ufeff").lstrip()[:1] in ("{", "["):
        body = _parse_json(body.removeprefix("\ufeff"))
    if isinstance(body, dict):
        return _from_object(body, "JSON body")
    if isinstance(body, (bytes, bytearray)):
        return Payload(_image_bytes(bytes(body), "body"))
    if isinstance(body, str):
        return Payload(_b64decode(body, "text body"))
    raise bad_request(f"JSON body must be an object with a '{IMAGE_FIELD}' field, not {type(body).__name__}")
