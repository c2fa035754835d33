"""Keep freed buffers in the process for reuse, instead of paging them in afresh.

A worker's batches and a video's frames allocate and free the same megabyte-sized buffers
(activations; decoded pixels and drawn maps). With glibc's defaults each comes from a fresh
``mmap`` or from heap memory trimmed back to the system after the last use, so every page is
faulted in and zeroed again: measured on the default model (batches of 8 224 px JPEGs, one
thread) about 2,300 page faults and 3 ms of system time per batch, 40% of its forward; drawing
one 640x480 video map 3.3 ms of CPU, 1.2 ms with the buffers reused. Fixing the mmap threshold
at glibc's largest and the trim threshold above it keeps such buffers in the heap (peak memory
is unchanged; the resident size stays near that peak). Process-wide, so only the handler (at
load, in its own worker), the video command and the benchmarks call it; a no-op off glibc.
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
    """Set glibc's thresholds so freed buffers are reused; whether it could (False off glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.debug("no mallopt in %s: buffers are left to the allocator's defaults", name)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
