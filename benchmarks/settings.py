"""Run sizes: FULL (the published RESULTS.md, ≤ ~15 min on an idle 2-core machine) and
QUICK (a smoke run of every code path, < 2 min idle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Settings:
    """How long and how often each section measures."""

    name: str
    # Section 1 (engine): interleaved rounds; one measurement lasts at least engine_min_call_s.
    engine_models: tuple[str, ...]
    engine_min_rounds: int
    engine_max_rounds: int
    engine_budget_s: float
    engine_min_call_s: float
    # Section 5 (every method): the many-pass methods (occlusion, integrated gradients) are timed apart, at
    # the largest batch (<= 8) whose call is expected to last at most many_pass_call_s, over these rounds.
    many_pass_call_s: float
    many_pass_min_rounds: int
    many_pass_max_rounds: int
    # Section 2 (end-to-end): load windows per endpoint, interleaved over rounds.
    e2e_models: tuple[str, ...]
    concurrencies: tuple[int, ...]
    window_s: float
    warmup_window_s: float
    e2e_rounds: int
    max_requests_per_window: int
    slow_cap_s: float  # a window of a slow endpoint (stock IG) may run this long to complete one request
    # Thread settings: TorchServe configurations compared side by side.
    thread_configs: tuple[str, ...]
    thread_models: tuple[str, ...]
    thread_concurrency: int
    thread_rounds: int
    # Section 6 (vision transformers): interleaved rounds per model.
    transformer_models: tuple[str, ...]
    transformer_rounds: int

    @property
    def engine_rounds(self) -> dict[str, Any]:
        """``interleave``'s rounds and budget for an engine section (min_rounds, max_rounds, budget_s)."""
        return {
            "min_rounds": self.engine_min_rounds,
            "max_rounds": self.engine_max_rounds,
            "budget_s": self.engine_budget_s,
        }


FULL = Settings(
    name="full",
    engine_models=("inspection", "resnet50"),
    engine_min_rounds=5,
    engine_max_rounds=25,
    engine_budget_s=45.0,
    engine_min_call_s=0.15,
    many_pass_call_s=20.0,
    many_pass_min_rounds=3,
    many_pass_max_rounds=10,
    e2e_models=("inspection", "resnet50"),
    concurrencies=(1, 8, 16),
    window_s=4.0,
    warmup_window_s=2.0,
    e2e_rounds=3,
    max_requests_per_window=3000,
    slow_cap_s=60.0,
    thread_configs=("default", "omp1", "omp1_2workers", "omp1_netty1", "omp2_passive"),
    thread_models=("inspection", "resnet50"),
    thread_concurrency=16,
    thread_rounds=2,
    transformer_models=("vit_b_16", "swin_t"),
    transformer_rounds=4,
)

QUICK = Settings(
    name="quick",
    engine_models=("inspection",),
    engine_min_rounds=2,
    engine_max_rounds=2,
    engine_budget_s=0.0,
    engine_min_call_s=0.05,
    many_pass_call_s=1.0,
    many_pass_min_rounds=1,
    many_pass_max_rounds=1,
    e2e_models=("inspection",),
    concurrencies=(8,),
    window_s=1.5,
    warmup_window_s=1.0,
    e2e_rounds=1,
    max_requests_per_window=500,
    slow_cap_s=20.0,
    thread_configs=("default", "omp1"),
    thread_models=("inspection",),
    thread_concurrency=8,
    thread_rounds=1,
    transformer_models=("swin_t",),
    transformer_rounds=1,
)
