"""The worker keeps freed activations mapped: a batch after the first faults in (almost) no new pages."""

from __future__ import annotations

import logging
import platform
import resource

import pytest
import torch

from handlers.serving.handler import GradCamHandler
from handlers.serving.memory import reuse_freed_buffers
from handlers.testing.fakes import load_context, unpack_mar
from handlers.testing.mars import build_custom_mar

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

BUFFER = 4 * 2**20  # floats: 16 MB, as a batch's activations of a mid-sized model


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_freed_buffers_are_reused_not_paged_in_again():
    assert reuse_freed_buffers()
    for _ in range(3):  # the heap grows to hold one buffer
        torch.empty(BUFFER).fill_(1.0)
    before = _page_faults()
    for _ in range(20):
        torch.empty(BUFFER).fill_(1.0)
    pages = 20 * BUFFER * 4 // 4096  # what fresh buffers would fault in: 81,920 pages
    assert _page_faults() - before < pages // 100


def test_the_handler_sets_it_up_when_it_loads(tmp_path, caplog):
    model_dir = unpack_mar(build_custom_mar(tmp_path), tmp_path / "model")
    with caplog.at_level(logging.INFO, logger="handlers.serving.handler"):
        GradCamHandler().initialize(load_context(model_dir, "tiny"))
    assert any("freed buffers reused" in record.getMessage() for record in caplog.records)
