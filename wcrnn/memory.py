"""Keep freed large tensors' memory for reuse (glibc only; a no-op elsewhere).

The recurrences allocate buffers of tens of MB on every call. glibc serves blocks above its
mmap threshold (at most 32 MB by default) with fresh mmaps and returns them to the OS when
freed, so every training step page-faults its buffers in again; measured on 2 cores, that was
a third of an N = 256 WCRNN training step and two thirds of an LRU step. Raising the mmap and
trim thresholds lets freed blocks be reused, which is also why PyTorch's CPU performance guide
recommends jemalloc or tcmalloc. Set WCRNN_MALLOC_TUNING=0 to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_THRESHOLD_BYTES = 1 << 30
_done = False


def reuse_freed_memory() -> None:
    """Idempotent; called by the fast recurrences before their first allocation."""
    global _done
    if _done:
        return
    _done = True
    if not sys.platform.startswith("linux") or os.environ.get("WCRNN_MALLOC_TUNING", "1") == "0":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return
    mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _THRESHOLD_BYTES)
