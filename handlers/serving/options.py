"""Per-request options: one parser, one precedence, one validation path.

Sources, lowest precedence first: the model's defaults (model-config YAML), request
headers ``X-Explain-<option>`` (``_`` written ``-``), then fields of the JSON body or
multipart form. A bad value is a 400 for that request, naming the option and the
accepted values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engine import METHODS, FaithfulnessParams, MethodParams
from ..engine.policy import ExplainPolicy
from .config import LIMIT_DEFAULTS
from .errors import RequestError, bad_request
from .faithfulness import DEFAULT_STEPS, LEVELS, STEPS_RANGE, applies_to, level_params
from .policy import POLICY_OPTIONS, parse_policy

HEADER_PREFIX = "x-explain-"
FORMATS = ("grid", "png", "overlay", "raw", "tiles")
SIZES = ("feature", "input")
# Options of every request, then the method parameters (each applies to the methods that list it).
GENERAL_OPTIONS = ("method", "target", "top_k", "top_k_explanations", "format", "size")
PARAM_RANGES: dict[str, tuple[int, int]] = {
    "channel": (0, 1_000_000),
    "channels": (1, 256),
    "window": (1, 100_000),
    "stride": (1, 100_000),
    "steps": (1, 100_000),
}
OPTIONS = (*GENERAL_OPTIONS, "layer", *PARAM_RANGES, "faithfulness", "faithfulness_steps", *POLICY_OPTIONS)
_MAX_LAYER_NAME = 300
BUILTIN_DEFAULTS: dict[str, Any] = {
    "method": "gradcam",
    "top_k": 3,
    "top_k_explanations": 1,
    "format": "grid",
    "size": "feature",
    "faithfulness": "off",
    "faithfulness_steps": DEFAULT_STEPS,
}


@dataclass(frozen=True)
class RequestOptions:
    """Validated options of one request. Empty ``targets`` means: explain the top predictions."""

    method: str
    targets: tuple[int, ...]
    top_k: int
    top_k_explanations: int
    format: str
    size: str
    params: MethodParams = field(default_factory=MethodParams)
    faithfulness: FaithfulnessParams | None = None  # measure each map's faithfulness (faithfulness.py)
    policy: ExplainPolicy | None = None  # cost control: explain only what it selects (policy.py)
    explain_key: str | None = None  # the key its sampling draw hashes (default: the request id)


def _header_text(value: Any) -> Any:
    """A header value as its sender wrote it: HTTP servers (TorchServe's Netty too) read header bytes as
    latin-1, so a UTF-8 label (``X-Explain-Target: défaut``) arrives mangled unless it is decoded again."""
    if isinstance(value, str) and not value.isascii():
        try:
            return value.encode("latin-1").decode("utf-8")
        except UnicodeError:  # not UTF-8 (or not latin-1 bytes): keep what arrived
            return value
    return value


def header_options(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The ``X-Explain-*`` request headers as option fields (case-insensitive names)."""
    return {
        name.lower()[len(HEADER_PREFIX) :].replace("-", "_"): _header_text(value)
        for name, value in headers.items()
        if isinstance(name, str) and name.lower().startswith(HEADER_PREFIX)
    }


# ASCII digits only ("²".isdigit() is true, int() refuses it), and short enough that int()
# never meets Python's digit limit: no option needs more than 18 digits.
_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,18}")
_SHOWN_CHARS = 60
# Distinct option sets whose parse is remembered (most traffic sends one or a few); then it starts over.
_MEMO_SIZE = 256
# Repeats of one target are merged, so a list may be longer than max_targets, but not without bound.
_MAX_TARGET_ITEMS_PER_TARGET = 4


def _text(value: Any) -> Any:
    return bytes(value).decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else value


def shown(value: Any) -> str:
    """``repr(value)`` cut short: error messages never echo a whole upload back."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


def whole_number(value: Any) -> int | None:
    """``value`` as an int when it is one or an ASCII-digit string of at most 18 digits, else None."""
    if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()):
        return int(value.strip())
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _integer(name: str, value: Any, low: int, high: int) -> int:
    value = _text(value)
    number = whole_number(value)
    if number is None:
        raise bad_request(f"option '{name}' must be an integer from {low} to {high}, got {shown(value)}")
    value = number
    if not low <= value <= high:
        raise bad_request(f"option '{name}' must be from {low} to {high}, got {value}")
    return value


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    value = _text(value)
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise bad_request(f"option '{name}' must be one of {', '.join(choices)}; got {shown(value)}")


def _faithfulness(
    method: str, fields: Mapping[str, Any], request_fields: Mapping[str, Any]
) -> FaithfulnessParams | None:
    """The faithfulness measure asked for; a request's own ask must fit its method (defaults need not)."""
    level = _choice("faithfulness", fields["faithfulness"], LEVELS)
    steps = _integer("faithfulness_steps", fields["faithfulness_steps"], *STEPS_RANGE)
    if "faithfulness_steps" in request_fields and level != "full":
        raise bad_request("option 'faithfulness_steps' applies to faithfulness=full only")
    if "faithfulness" in request_fields and level != "off" and not applies_to(method):
        raise bad_request(f"option 'faithfulness' applies to class-specific methods only, not to {method!r}")
    return level_params(level, steps)


class OptionParser:
    """Validates option fields against a model's classes and methods."""

    def __init__(
        self,
        labels: Sequence[str],
        methods: Sequence[str],
        defaults: Mapping[str, Any],
        max_targets: int,
        max_top_k: int = int(LIMIT_DEFAULTS["max_top_k"]),
    ) -> None:
        self.labels = list(labels)
        self.methods = tuple(methods)
        self.max_targets = max_targets
        self.max_top_k = max_top_k
        self._by_label = {label: i for i, label in enumerate(self.labels)}
        self._by_folded_label = {label.casefold(): i for i, label in enumerate(self.labels)}
        self._default_fields = {**BUILTIN_DEFAULTS, **defaults}
        self._memo: dict[Any, RequestOptions] = {}
        try:
            self.defaults = self.parse(self._default_fields)
        except RequestError as error:
            raise ValueError(f"invalid 'gradcam.defaults' in the model config: {error}") from None

    def defaults_as_fields(self) -> dict[str, Any]:
        """The model's default options, as a request would write them."""
        return dict(self._default_fields)

    def _class_index(self, value: Any) -> int:
        if isinstance(value, bool):
            raise bad_request(f"option 'target' must be a class index or label, got {value!r}")
        number = whole_number(value)
        if number is not None:
            if 0 <= number < len(self.labels):
                return number
            raise bad_request(f"option 'target': class index {shown(number)} is outside 0..{len(self.labels) - 1}")
        if isinstance(value, str):
            label = value.strip()
            found = self._by_label.get(label, self._by_folded_label.get(label.casefold()))
            if found is not None:
                return found
            valid = ", ".join(self.labels[:10]) + (
                f", ... ({len(self.labels)} labels)" if len(self.labels) > 10 else ""
            )
            raise bad_request(
                f"option 'target': {shown(label)} is not a class label; "
                f"valid: {valid} or indices 0..{len(self.labels) - 1}"
            )
        raise bad_request(
            f"option 'target' must be a class index or label (or a list of them), got {type(value).__name__}"
        )

    def _targets(self, value: Any) -> tuple[int, ...]:
        value = _text(value)
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
        if len(items) > _MAX_TARGET_ITEMS_PER_TARGET * self.max_targets:  # refused before any is parsed
            raise bad_request(f"option 'target': {len(items)} items, at most {self.max_targets} targets per image")
        targets = tuple(dict.fromkeys(self._class_index(item) for item in items if item != ""))
        if not targets:
            raise bad_request("option 'target' is empty")
        if len(targets) > self.max_targets:
            raise bad_request(f"option 'target': {len(targets)} targets, at most {self.max_targets} per image")
        return targets

    def parse(self, fields: Mapping[str, Any], request_fields: Mapping[str, Any] | None = None) -> RequestOptions:
        """Validated options from ``fields`` (already merged by precedence).

        ``request_fields`` (the part that came from the request itself) is checked for a
        contradiction: explicit targets together with ``top_k_explanations``.
        """
        unknown = [name for name in fields if name not in OPTIONS]
        if unknown:
            raise bad_request(
                f"unknown option {shown(unknown[0])}; valid options: {', '.join(OPTIONS)} (and the image in 'data')"
            )
        if request_fields and "target" in request_fields and "top_k_explanations" in request_fields:
            raise bad_request("give either 'target' or 'top_k_explanations', not both")
        num_classes = len(self.labels)
        method = _choice("method", fields["method"], self.methods)
        fmt = _choice("format", fields["format"], FORMATS)
        if fmt == "tiles" and method != "activations":
            raise bad_request("format 'tiles' (a mosaic of channels) is for method 'activations' only")
        policy, explain_key = parse_policy(fields, method, self._class_index, num_classes)
        return RequestOptions(
            method=method,
            targets=self._targets(fields["target"]) if fields.get("target") not in (None, "") else (),
            top_k=min(_integer("top_k", fields["top_k"], 1, self.max_top_k), num_classes),
            top_k_explanations=_integer(
                "top_k_explanations", fields["top_k_explanations"], 1, min(num_classes, self.max_targets)
            ),
            format=fmt,
            size=_choice("size", fields["size"], SIZES),
            params=self._params(method, fields),
            faithfulness=_faithfulness(method, fields, request_fields or {}),
            policy=policy,
            explain_key=explain_key,
        )

    def _params(self, method: str, fields: Mapping[str, Any]) -> MethodParams:
        """The method parameters given, each checked to apply to ``method``."""
        given = {name: fields[name] for name in ("layer", *PARAM_RANGES) if fields.get(name) not in (None, "")}
        accepted = METHODS[method].params if method in METHODS else ()
        for name in given:
            if name not in accepted:
                users = [m.name for m in METHODS.values() if name in m.params]
                raise bad_request(f"option '{name}' applies to method {' or '.join(users)} only, not to {method!r}")
        values: dict[str, Any] = {
            name: _integer(name, value, *PARAM_RANGES[name]) for name, value in given.items() if name != "layer"
        }
        if "layer" in given:
            layer = _text(given["layer"])
            if not isinstance(layer, str) or not 0 < len(layer.strip()) <= _MAX_LAYER_NAME:
                raise bad_request(f"option 'layer' must be a layer name, got {shown(layer)}")
            values["layer"] = layer.strip()
        return MethodParams(**values)

    def for_request(
        self, headers: Mapping[str, Any], body_fields: Mapping[str, Any], explain: bool = False
    ) -> RequestOptions:
        """Options of one request: defaults < X-Explain-* headers < body/form fields.

        ``explain`` (the /explanations endpoint) turns a default method of ``none`` into
        ``gradcam`` and drops the model's default cost policy: that endpoint always explains
        unless the request itself says none or gives a policy.
        """
        request_fields = {**header_options(headers), **body_fields}
        try:  # the type is part of the key: True == 1 == 1.0, but only 1 is a valid top_k
            key: Any = (explain, frozenset((name, type(value), value) for name, value in request_fields.items()))
        except TypeError:  # a list or an object among the values: parsed each time
            key = None
        if key is not None and (known := self._memo.get(key)) is not None:
            return known  # immutable, so requests may share it
        options = self._parse_request(request_fields, explain)
        if key is not None:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = options
        return options

    def _parse_request(self, request_fields: dict[str, Any], explain: bool) -> RequestOptions:
        """``for_request``'s work: the defaults as the endpoint says, then the request's fields over them."""
        defaults = dict(self._default_fields)
        if explain and defaults["method"] == "none":
            defaults["method"] = "gradcam"
        if explain:  # nor does the model's cost policy apply there (the request's own does)
            for name in POLICY_OPTIONS:
                defaults.pop(name, None)
        if "target" in request_fields:  # an explicit target replaces a default top-k
            defaults["top_k_explanations"] = 1
        try:
            return self.parse({**defaults, **request_fields}, request_fields)
        except RequestError as error:
            error.reason = error.reason or "option"  # the label its refusal is counted under
            raise
