"""Keep freed memory in the process for reuse: a video's per-frame buffers would otherwise be paged in afresh.

Every frame allocates and frees the same megabyte-sized buffers (decoded pixels, the map's
values and colours, Pillow's images). glibc serves each from a fresh ``mmap`` and unmaps it on
``free``, so every page is faulted in and zeroed again, frame after frame: measured on a
640x480 video, drawing one map cost 3.3 ms of CPU that way and 1.2 ms with the buffers reused.
Fixing the mmap threshold (and the trim threshold above it) keeps such buffers in the heap.
Process-wide, so only the video command (and its benchmark) call it; a no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: blocks up to this come from the heap and are reused
TRIM_THRESHOLD = 128 * 2**20  # free memory kept at the heap's top before it is given back


def reuse_freed_buffers() -> bool:
    """Set glibc's thresholds so freed frame buffers are reused; whether it could (False off glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.debug("no mallopt in %s: buffers are left to the allocator's defaults", name)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
