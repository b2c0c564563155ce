"""How the allocators hand freed memory back to the system (set by the commands, once)."""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter

# Why both functions below: the data engine passes through large short-lived tables and arrays
# one after another, and with the allocators' default caches their sum, not their largest,
# sets the peak (a 100,000-file manifest: 368 MB against 278 MB, BENCHMARKS.md). Both make
# freed memory go back to the system at once.


def polars_returns_freed_memory() -> None:
    """Polars' jemalloc reads this when polars loads, so ``main`` sets it before that."""
    os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")


def glibc_returns_freed_memory() -> None:
    """For numpy and Python; set by the data engine's commands only: a fixed trim threshold also
    sends every large array to its own mapping, which frees at once but would fault in fresh
    pages for each training batch. A no-op where the C library is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass
