"""One bounded, order-keeping parallel map: used by the runtime's decoding and the data
engine's fingerprinting alike; how many cores there are to run it on; worker processes that
end with their parent; and interrupts held back while a pool starts one."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import TypeVar

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
INTERRUPTS = (signal.SIGINT, signal.SIGTERM)  # what a command turns into KeyboardInterrupt

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


def die_with_parent(parent: int) -> None:
    """Called first thing in a worker process that ``parent`` (its pid) forked: the kernel
    kills the worker (SIGKILL) the moment its parent ends, however it ends. A command killed
    with SIGKILL cannot stop its workers: a data loader's polled for their parent only every
    5 s. If the parent ended before this call, the worker ends now. The signal follows the
    thread that forked the worker, so only workers forked by a thread that lives as long as
    its process may call this (the main thread's). Linux only; elsewhere it does nothing."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # reparented already: the parent is gone
        os._exit(1)


def has_ended(pid: int) -> bool:
    """Whether process ``pid`` has ended: gone, or a zombie (ended, its exit status not yet
    collected; a parent that waits on a pipe the zombie's own workers hold open never
    collects it). Another user's process under a reused pid counts as ended."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):  # no /proc (macOS, Windows), or gone meanwhile
        return False


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Ctrl-C and SIGTERM received inside the block take effect when it ends, as they would
    have: for a step that must not be cut in two, such as a process pool starting a worker
    (see ``fingerprint.Processes``). Only the main thread runs signal handlers; elsewhere the
    block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in INTERRUPTS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])  # now, to the handler the block deferred it from
