"""A progress line on stderr, silent when stderr is not a terminal (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None, desc: str, enabled: bool | None = None) -> Iterator[T]:
    """Yield ``items`` unchanged, redrawing ``desc: n/total rate`` at most 10 times a second."""
    enabled = sys.stderr.isatty() if enabled is None else enabled
    if not enabled:
        yield from items
        return
    start = last = time.perf_counter()
    count = 0
    for count, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last > 0.1 or count == total:
            last = now
            rate = count / max(now - start, 1e-9)
            of = f"/{total}" if total else ""
            sys.stderr.write(f"\r{desc}: {count}{of} ({rate:.1f}/s)")
            sys.stderr.flush()
    if count:
        sys.stderr.write("\n")
