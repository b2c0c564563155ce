"""Keeping a long run's memory where its work puts it.

glibc's allocator gives each thread its own arena and, once a large block has been freed,
raises the size above which it maps blocks directly (up to 32 MB). Decoding threads then keep
every large picture's pixels in their own arenas after freeing them: eight threads taking turns
on 30-megapixel pictures held 1.2 GB where one picture at a time needs 450 MB. A fixed
threshold maps every large block directly, so freeing it returns it to the system at once.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
LARGE_BLOCK = 1 << 20  # picture buffers are megabytes; the interpreter's own objects stay below


def return_large_blocks() -> bool:
    """Make freed large blocks go back to the system (glibc only; elsewhere nothing to do).
    Returns whether the setting was made. For the command-line tools, which own their process."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK))
    except (OSError, AttributeError):  # musl and other C libraries: no such knob, and no such arenas
        return False
