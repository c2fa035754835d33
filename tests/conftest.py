"""Shared fixtures: small random-weight models and the fake TorchServe context."""

from __future__ import annotations

import functools
import signal

import pytest
import torch
import torchvision


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config) -> None:
    """Turn SIGTERM (a CI or `timeout` kill) into an interrupt, so fixtures stop their servers;
    run torch on one thread: the test servers' workers share the 2 cores, and two OpenMP
    threads stall at every op's barrier when the other core is busy (mobilenet_v3_large
    forward 1.49 s instead of 0.055 s, measured)."""
    signal.signal(signal.SIGTERM, _interrupt)
    torch.set_num_threads(1)


@functools.cache
def _random_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if arch in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(arch, weights=None, **kwargs).eval()


@pytest.fixture
def random_model():
    """torchvision architecture with seeded random weights: mechanics only, no downloads."""
    return _random_model


@functools.cache
def _explainer(arch: str, size: int):
    from handlers.engine import Explainer

    return Explainer(_random_model(arch), (size, size))


@pytest.fixture
def explainer_for():
    """Cached Explainer of a random-weight torchvision model at a square input size."""
    return _explainer
