"""The cost-policy options of a request (or of a model's defaults), validated into an ExplainPolicy.

``explain_below`` (0..1): explain when the top probability is below it; ``explain_rate``
(0..1): explain this fraction, sampled by a hash of ``explain_key`` (default: the request's
id); ``explain_classes``: always explain predictions of these classes (labels or indices).
Any rule that selects an image explains it (precedence of reasons in ``engine/policy.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..engine.policy import ExplainPolicy
from .errors import RequestError, bad_request

POLICY_RULES = ("explain_below", "explain_rate", "explain_classes")
POLICY_OPTIONS = (*POLICY_RULES, "explain_key")
_FRACTION = re.compile(r"[0-9]{1,3}(\.[0-9]{1,15})?|\.[0-9]{1,15}")
_MAX_KEY = 200


def _text(value: Any) -> Any:
    return bytes(value).decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else value


def fraction(name: str, value: Any) -> float:
    """``value`` as a number from 0 to 1 (a JSON number or decimal digits), else a 400 naming ``name``."""
    value = _text(value)
    number: float | None = None
    if isinstance(value, str) and _FRACTION.fullmatch(value.strip()):
        number = float(value.strip())
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        number = float(value)
    if number is None or not 0.0 <= number <= 1.0:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "..."
        raise bad_request(f"option '{name}' must be a number from 0 to 1, got {shown}")
    return number


def _classes(value: Any, class_index: Callable[[Any], int], num_classes: int) -> frozenset[int]:
    value = _text(value)
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    if len(items) > 4 * num_classes:
        raise bad_request(f"option 'explain_classes': {len(items)} items for {num_classes} classes")
    try:
        return frozenset(class_index(item) for item in items if item != "")
    except RequestError as error:  # the class error names 'target': say which option it was
        raise bad_request(error.message.replace("option 'target'", "option 'explain_classes'", 1)) from None


def parse_policy(
    fields: Mapping[str, Any], method: str, class_index: Callable[[Any], int], num_classes: int
) -> tuple[ExplainPolicy | None, str | None]:
    """The policy and sampling key the ``fields`` give; no policy for ``method=none`` or without a rule."""
    given = {name: fields[name] for name in POLICY_OPTIONS if fields.get(name) not in (None, "")}
    key = _text(given.get("explain_key"))
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY):
        raise bad_request(f"option 'explain_key' must be a text of 1 to {_MAX_KEY} characters")
    policy = ExplainPolicy(
        below=fraction("explain_below", given["explain_below"]) if "explain_below" in given else None,
        rate=fraction("explain_rate", given["explain_rate"]) if "explain_rate" in given else None,
        classes=_classes(given["explain_classes"], class_index, num_classes)
        if "explain_classes" in given
        else frozenset(),
    )
    if method == "none" or not any(name in given for name in POLICY_RULES):
        return None, key
    return policy, key
