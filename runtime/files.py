"""Writing a file so that a run killed half-way never leaves a truncated one, nor (after the
next successful write) its temporary.

``write`` fills a temporary file beside the target and a rename makes it visible at once. The
temporary's name carries the writer's process id, so a later write can tell the leftovers of a
killed run (their process is gone) from a file another live process is still writing.
"""

from __future__ import annotations

import errno
import glob
import os
import secrets
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from runtime.errors import SimpsonsError

T = TypeVar("T")

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def real_path(path: Path) -> Path:
    """``path`` with every symbolic link resolved (also when the file does not exist yet): the
    one name of a file however it is reached, which locks and replacements must use."""
    return Path(os.path.realpath(path))


def temporary_path(path: Path) -> Path:
    """A new, empty file beside ``path``, named for this process (``.NAME.PID.RANDOM.tmp``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the usual mode: umask applies
    return tmp


def atomic_write(path: Path, write: Callable[[Path], T]) -> T:
    """``write(tmp)``, then ``tmp`` becomes ``path``; returns what ``write`` returned. Where
    ``path`` is a symbolic link, the file it points to is replaced, not the link."""
    path = real_path(path)
    tmp = temporary_path(path)
    try:
        result = write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    remove_stale_temporaries(path.parent, path.name)
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: Path, name_pattern: str = "*") -> list[Path]:
    """Delete ``.NAME.PID.*.tmp`` files in ``folder`` whose writer is no longer running."""
    removed = []
    for tmp in folder.glob(f".{glob.escape(name_pattern) if name_pattern != '*' else '*'}.*.tmp"):
        pid = tmp.name.rsplit(".", 3)[-3]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def check_writable(folder: Path) -> None:
    """Fail now, with the OSError naming the folder, rather than after hours of work."""
    for parent in (folder, *folder.parents):  # a file where a folder should be: say so plainly
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(parent))
            break
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-check.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    probe.unlink()


class BusyError(SimpsonsError):
    """Another run is writing the same output."""


class Lock:
    """An exclusive ``flock`` on ``.NAME.lock`` beside an output, held until ``release``. The
    kernel drops it when the process dies, so a killed run never leaves a stale lock. Taken
    at once or refused (``BusyError``); with ``wait``, waited for. Keyed on the output's real
    path: two runs writing one file through a symbolic link and its target exclude each other.

    The lock is the process's own, never its forked children's (``_drop_inherited_locks``).
    ``flock`` rather than POSIX record locks (``lockf``), which forked children would not
    inherit either: those are per process, so a second ``Lock`` on one output in the same
    process would be granted, and closing any descriptor of the file would drop them."""

    def __init__(self, path: Path, wait: bool = False):
        self.file = None
        if fcntl is None:  # Windows: no advisory locks here; outputs are still written atomically
            return
        shown, path = path, real_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path.with_name(f".{path.name}.lock"), "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            self.file.close()
            raise BusyError(f"{shown} is being written by another run; wait for it to finish or choose another output") from None
        _held.add(self)

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing drops the lock
            self.file = None
        _held.discard(self)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_held: weakref.WeakSet[Lock] = weakref.WeakSet()  # this process's locks


def _drop_inherited_locks() -> None:
    """In a child just forked (a data loader's worker): close its copies of the parent's lock
    files. A forked child shares the parent's ``flock``, which lasts until every copy is
    closed: workers orphaned by ``kill -9`` of ``simpsons train`` kept the run folder locked
    and refused ``--resume`` for seconds. Closing a copy leaves the parent's lock held; a
    child never releases what it does not own. (Programs a child execs get no copy: Python
    opens files close-on-exec.)"""
    for lock in list(_held):
        lock.file.close()
        lock.file = None
    _held.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork and no flock here
    os.register_at_fork(after_in_child=_drop_inherited_locks)
