"""Our keys in the model-config YAML (under ``gradcam:``), validated once at model load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..engine.methods.base import MethodLimits
from ..preprocess import InputSpec

CONFIG_KEY = "gradcam"


# Per-model limits (and the decode threads), each a whole number >= 1 except the decode deadline
# (seconds > 0).
# max_response_bytes stays below TorchServe's default max_response_size (6,553,500): a reply
# over the server's limit makes the frontend drop the worker and fail its batch.
LIMIT_DEFAULTS: dict[str, int | float] = {
    "max_image_pixels": 40_000_000,
    "max_targets": 10,
    "max_top_k": 100,
    "max_response_bytes": 6_000_000,
    "max_jpeg_scans": 100,
    "decode_timeout_s": 10.0,
    "max_occlusion_forwards": MethodLimits.max_occlusion_forwards,
    "max_ig_steps": MethodLimits.max_ig_steps,
    "max_faithfulness_steps": MethodLimits.max_faithfulness_steps,
    # Large uploads of one batch (camera pictures) decoded this many at a time: Pillow's decoders
    # release the GIL, so a batch of 12 MP JPEGs waits about half as long on two cores.
    "decode_threads": 2,
}

# Whole numbers >= 1 that may be left out: then the worker decides (ServingConfig's comments).
OPTIONAL_WHOLE = ("torch_threads", "max_batch_forwards")


def model_builder(yaml_config: Any) -> str | None:
    """The ``gradcam.model.builder`` a model config names, read before (and without) validating the rest,
    so the worker can check the packages that builder needs before it imports any of them."""
    section = yaml_config.get(CONFIG_KEY) if isinstance(yaml_config, dict) else None
    model = section.get("model") if isinstance(section, dict) else None
    builder = model.get("builder") if isinstance(model, dict) else None
    return builder if isinstance(builder, str) else None


def _limit(section: dict[str, Any], key: str) -> Any:
    """The value of limit ``key`` in ``section`` (or its default), validated."""
    default = LIMIT_DEFAULTS[key]
    value = section.get(key, default)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"'{CONFIG_KEY}.{key}' must be a number of seconds > 0, got {value!r}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'{CONFIG_KEY}.{key}' must be a whole number >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class ServingConfig:
    """Everything the handler reads from ``model_yaml_config['gradcam']``."""

    model: dict[str, Any]
    input: InputSpec
    target_layer: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    max_image_pixels: int = int(LIMIT_DEFAULTS["max_image_pixels"])
    max_targets: int = int(LIMIT_DEFAULTS["max_targets"])
    max_top_k: int = int(LIMIT_DEFAULTS["max_top_k"])
    max_response_bytes: int = int(LIMIT_DEFAULTS["max_response_bytes"])
    max_jpeg_scans: int = int(LIMIT_DEFAULTS["max_jpeg_scans"])
    decode_timeout_s: float = float(LIMIT_DEFAULTS["decode_timeout_s"])
    max_occlusion_forwards: int = MethodLimits.max_occlusion_forwards
    max_ig_steps: int = MethodLimits.max_ig_steps
    max_faithfulness_steps: int = MethodLimits.max_faithfulness_steps
    decode_threads: int = int(LIMIT_DEFAULTS["decode_threads"])
    # Torch intra-op threads per worker; None: OMP_NUM_THREADS if set, else 1 (see threads()).
    torch_threads: int | None = None
    # Forward passes one batch may cost (serving/budget.py); None: measured at load against the response timeout.
    max_batch_forwards: int | None = None

    @classmethod
    def from_yaml(cls, yaml_config: dict[str, Any] | None) -> ServingConfig:
        """Parse and validate; raises ValueError naming the bad key."""
        section = (yaml_config or {}).get(CONFIG_KEY)
        if not isinstance(section, dict):
            raise ValueError(f"model-config YAML has no '{CONFIG_KEY}:' section (build the MAR with handlers.archive)")
        unknown = set(section) - {"model", "input", "target_layer", "defaults", *OPTIONAL_WHOLE, *LIMIT_DEFAULTS}
        if unknown:
            raise ValueError(f"unknown key(s) in '{CONFIG_KEY}:' section: {', '.join(sorted(unknown))}")
        raw_input = dict(section.get("input") or {})
        unknown_input = set(raw_input) - {"resize", "crop", "interpolation", "mean", "std"}
        if unknown_input:
            raise ValueError(f"unknown key(s) in '{CONFIG_KEY}.input': {', '.join(sorted(unknown_input))}")
        if "resize" not in raw_input:
            raise ValueError(f"'{CONFIG_KEY}.input.resize' is required")
        resize = raw_input.pop("resize")
        raw_input["resize"] = resize if isinstance(resize, int) else tuple(int(v) for v in resize)
        for key in ("mean", "std"):
            if key in raw_input:
                raw_input[key] = tuple(float(v) for v in raw_input[key])
        for key in OPTIONAL_WHOLE:
            value = section.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"'{CONFIG_KEY}.{key}' must be a whole number >= 1, got {value!r}")
        return cls(
            model=dict(section.get("model") or {}),
            input=InputSpec(**raw_input),
            target_layer=section.get("target_layer"),
            defaults=dict(section.get("defaults") or {}),
            torch_threads=section.get("torch_threads"),
            max_batch_forwards=section.get("max_batch_forwards"),
            **{key: _limit(section, key) for key in LIMIT_DEFAULTS},
        )

    @property
    def method_limits(self) -> MethodLimits:
        """The caps the engine's methods enforce per request."""
        return MethodLimits(self.max_occlusion_forwards, self.max_ig_steps, self.max_faithfulness_steps)

    def threads(self, environ: Mapping[str, str]) -> int | None:
        """Torch threads the worker should set, or None to keep what OMP_NUM_THREADS already set.

        TorchServe runs one worker per core by default and never sets OMP_NUM_THREADS for
        plain workers, so torch's default (one thread per core, in every worker)
        oversubscribes the cores: one thread per worker unless the MAR or the operator says otherwise.
        """
        if self.torch_threads is not None:
            return self.torch_threads
        return None if environ.get("OMP_NUM_THREADS") else 1
