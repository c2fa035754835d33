"""What a model offers (methods, labels, layers), from the server's description or the registry.

A served model describes itself on the management API (``GET /models/{name}?customized=true``,
field ``customizedMetadata``). The client checks its arguments against that description, so a
method the model lacks (``cam`` on a head that is not pool + linear) or an option that does not
apply is a usage error before any image is sent. Without the management API (another host,
a token it does not accept) the engine's own registry is the fallback: it lists every method
with its options, but knows nothing of the model's labels or layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Client flags that are method options, as the server names them (``--channels`` -> ``channels``).
METHOD_OPTIONS = ("layer", "channel", "channels", "window", "stride", "steps")


@dataclass(frozen=True)
class MethodInfo:
    """One explanation method as a model describes it."""

    name: str
    summary: str
    class_specific: bool
    resolution: str  # "layer": the explained layer's grid; "input": the model input's
    passes: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class ModelDescription:
    """A model's methods and, when the server said so, its labels, layers and the rest of its description."""

    methods: dict[str, MethodInfo]
    source: str  # where it came from: "server" or "registry"
    labels: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)  # the whole description as the server sent it


def _method(entry: Mapping[str, Any]) -> MethodInfo:
    return MethodInfo(
        name=str(entry["name"]),
        summary=str(entry.get("summary", "")),
        class_specific=bool(entry["class_specific"]),
        resolution=str(entry.get("resolution", "")),
        passes=str(entry.get("passes", "")),
        options=tuple(str(option) for option in entry.get("options", ())),
    )


def from_server(description: Mapping[str, Any]) -> ModelDescription:
    """A ``customizedMetadata`` object; KeyError/TypeError/ValueError when it is not our handler's."""
    methods = [_method(entry) for entry in description["methods"]]
    return ModelDescription(
        methods={method.name: method for method in methods},
        source="server",
        labels=tuple(str(label) for label in description.get("labels", ())),
        layers=tuple(str(layer) for layer in description.get("layers", ())),
        details=dict(description),
    )


def from_registry() -> ModelDescription:
    """Every method of the engine's registry (imports torch: only when the server can't say)."""
    from ..engine.methods import METHODS

    return ModelDescription(
        methods={
            name: MethodInfo(
                name=name,
                summary=method.summary,
                class_specific=method.class_specific,
                resolution=method.resolution,
                passes=method.passes,
                options=tuple(method.params),
            )
            for name, method in METHODS.items()
        },
        source="registry",
    )


def check_request(
    description: ModelDescription, method: str, targets: Sequence[str], options: Mapping[str, object]
) -> str | None:
    """Why ``method`` with these targets and options can't be asked of this model, or None."""
    info = description.methods.get(method)
    where = "this model" if description.source == "server" else "the engine's registry"
    if info is None:
        return f"--method {method!r} is not offered by {where}; choose one of {', '.join(description.methods)}"
    if targets and not info.class_specific:
        return f"--target needs a class-specific method; {method!r} is not class-specific (its maps have no target)"
    for name in options:
        if name not in info.options:
            users = [m.name for m in description.methods.values() if name in m.options]
            return f"--{name} applies to --method {' or '.join(users) or '(none)'}, not to {method!r}"
    return None


def check_faithfulness(description: ModelDescription, method: str, faithfulness: str | None) -> str | None:
    """Why ``--faithfulness`` can't go with ``method`` (a map of no class: no class confidence to test), or None."""
    info = description.methods.get(method)
    if faithfulness and info is not None and not info.class_specific:
        return f"--faithfulness needs a class-specific method; {method!r} maps no class"
    return None


def describe(description: ModelDescription) -> str:
    """The description as text: a methods table, the labels and the layers (what ``--describe`` prints)."""
    details = description.details
    lines = []
    if details:
        size = "x".join(str(side) for side in details.get("input_size", ()))
        fast = " (Grad-CAM family via the pool + linear head, no backward)" if details.get("cam_fast_path") else ""
        lines.append(f"model {details.get('model')}: input {size}, target layer {details.get('target_layer')}{fast}")
    else:
        lines.append("the engine's registry (the server's management API did not answer): every method, no labels")
    header = ("METHOD", "CLASS-SPECIFIC", "RESOLUTION", "OPTIONS", "WHAT IT SHOWS")
    rows = [header] + [
        (m.name, "yes" if m.class_specific else "no", m.resolution, ", ".join(m.options) or "-", m.summary)
        for m in description.methods.values()
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines += ["  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]]) for row in rows]
    if description.labels:
        indexed = ", ".join(f"{i} {label}" for i, label in enumerate(description.labels))
        lines.append(f"labels ({len(description.labels)}): {indexed}")
    if description.layers:
        lines.append(f"layers for --layer ({len(description.layers)}, last first): {', '.join(description.layers)}")
    for key in ("formats", "defaults", "limits"):
        value = details.get(key)
        if isinstance(value, Mapping):
            lines.append(f"{key}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
        elif isinstance(value, list):
            lines.append(f"{key}: {', '.join(map(str, value))}")
    return "\n".join(lines)
