"""One bounded, order-keeping parallel map: used by the runtime's decoding and the data
engine's fingerprinting alike; and how many cores there are to run it on."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def in_order(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[tuple[T, Future[R]]]:
    """(item, future of ``fn(item)``) in input order, with at most ``window`` items in flight:
    memory stays flat however many items there are, and a consumer that stops early leaves
    only a window's work behind. Futures are done when yielded; ``result()`` re-raises."""
    pending: deque[tuple[T, Future[R]]] = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            item, future = pending.popleft()
            future.exception()  # wait
            yield item, future
    while pending:
        item, future = pending.popleft()
        future.exception()
        yield item, future


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's cpuset),
    which can be far fewer than the machine's ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
