"""Our keys in the model-config YAML (under ``gradcam:``), validated once at model load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..preprocess import InputSpec

CONFIG_KEY = "gradcam"


@dataclass(frozen=True)
class ServingConfig:
    """Everything the handler reads from ``model_yaml_config['gradcam']``."""

    model: dict[str, Any]
    input: InputSpec
    target_layer: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    max_image_pixels: int = 40_000_000
    max_targets: int = 10
    # Torch intra-op threads per worker; None: OMP_NUM_THREADS if set, else 1 (see threads()).
    torch_threads: int | None = None

    @classmethod
    def from_yaml(cls, yaml_config: dict[str, Any] | None) -> ServingConfig:
        """Parse and validate; raises ValueError naming the bad key."""
        section = (yaml_config or {}).get(CONFIG_KEY)
        if not isinstance(section, dict):
            raise ValueError(f"model-config YAML has no '{CONFIG_KEY}:' section (build the MAR with handlers.archive)")
        unknown = set(section) - {
            "model",
            "input",
            "target_layer",
            "defaults",
            "max_image_pixels",
            "max_targets",
            "torch_threads",
        }
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
        threads = section.get("torch_threads")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"'{CONFIG_KEY}.torch_threads' must be a whole number >= 1, got {threads!r}")
        return cls(
            model=dict(section.get("model") or {}),
            input=InputSpec(**raw_input),
            target_layer=section.get("target_layer"),
            defaults=dict(section.get("defaults") or {}),
            max_image_pixels=int(section.get("max_image_pixels", cls.max_image_pixels)),
            max_targets=int(section.get("max_targets", cls.max_targets)),
            torch_threads=threads,
        )

    def threads(self, environ: Mapping[str, str]) -> int | None:
        """Torch threads the worker should set, or None to keep what OMP_NUM_THREADS already set.

        TorchServe runs one worker per core by default and never sets OMP_NUM_THREADS for
        plain workers, so torch's default (one thread per core, in every worker)
        oversubscribes the cores: one thread per worker unless the MAR or the operator says otherwise.
        """
        if self.torch_threads is not None:
            return self.torch_threads
        return None if environ.get("OMP_NUM_THREADS") else 1
