"""Freed buffers are kept for reuse (worker, video client) instead of going back to the system to be paged in again."""

from __future__ import annotations

import logging
import platform
import subprocess
import sys

import pytest

from handlers.memory import reuse_freed_buffers
from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import load_context, unpack_mar
from handlers.testing.mars import build_custom_mar

GLIBC = platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")

BUFFER = 4 * 2**20  # floats: 16 MB, one activation of a mid-sized model's batch
LIVE = 4  # buffers alive at once, as a forward's activations are: 64 MB freed together
# Run in a fresh interpreter, so nothing else holds or frees memory in it. Prints how many of
# one batch's bytes stay resident after the batch is freed: kept for the next batch, or given back.
_KEPT = f"""
import os, sys, torch
from handlers.memory import reuse_freed_buffers
if sys.argv[1] == "reuse":
    assert reuse_freed_buffers()
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
batch = [torch.empty({BUFFER}).fill_(1.0) for _ in range({LIVE})]
del batch
print(resident() - before)
"""


def _kept_bytes(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", _KEPT, mode], capture_output=True, text=True, check=True)
    return int(run.stdout)


def test_the_thresholds_are_set_on_glibc_and_nothing_happens_elsewhere():
    assert reuse_freed_buffers() is GLIBC


@needs_glibc
def test_a_freed_batch_stays_resident_for_the_next_instead_of_going_back():
    batch = LIVE * BUFFER * 4
    assert _kept_bytes("defaults") < batch // 4  # glibc's defaults give the 64 MB back: paged in again next time
    assert _kept_bytes("reuse") > batch * 3 // 4  # kept, so the next batch reuses the pages


@needs_glibc
def test_the_handler_sets_it_up_when_it_loads(tmp_path, caplog):
    model_dir = unpack_mar(build_custom_mar(tmp_path), tmp_path / "model")
    with caplog.at_level(logging.INFO, logger="handlers.serving.handler"):
        GradCamHandler().initialize(load_context(model_dir, "tiny"))
    assert any("freed buffers reused" in record.getMessage() for record in caplog.records)
