"""The files ``simpsons-infer`` classifies, streamed: folders are walked in sorted order, one
directory at a time, so a million files never sit in one list, the order is the same on every
run (which is what lets ``--resume`` skip what an earlier run wrote), and any name can be shown.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from runtime.errors import SimpsonsError
from runtime.labels import is_image_name


class ResumeError(SimpsonsError):
    """An earlier run's output cannot be continued."""


def display_path(path: str | os.PathLike) -> str:
    """A file name as text that any output format can hold: bytes that are not UTF-8 become
    ``\\xNN`` (Python keeps them as surrogates, which UTF-8 writers refuse) and line breaks and
    other control characters are escaped, so a CSV row stays one line. Ordinary names are
    unchanged; escaped ones are reversible (``\\x`` sequences back to their bytes)."""
    text = os.fspath(path)
    if text.isprintable():
        return text
    raw = os.fsencode(text)
    escaped = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else c.encode("unicode_escape").decode() for c in escaped)


def odd_name(path: str | os.PathLike) -> bool:
    return display_path(path) != os.fspath(path)


log = logging.getLogger("simpsons.listing")
_SORTED = functools.partial(sorted, key=lambda entry: os.fsencode(entry.name))


class Listing:
    """Image files under ``paths`` (files named directly are taken as they are), in a stable
    order, produced as they are consumed; ``skipped`` counts the non-image files passed over.
    ``wanted`` (a file name -> bool) chooses other files: the data engine lists every one;
    ``descend`` (a folder -> bool) says which subfolders to walk: the data engine leaves out
    the folders that hold its own output.

    Folders are walked depth first in sorted order, on a stack of their own (1,100 nested
    folders are no RecursionError), each folder once: a symbolic link back to a folder already
    walked (``ln -s . D/self``) is skipped, not followed round. What cannot be listed (an
    unreadable folder, a broken link, a FIFO, socket or device, which would block a reader)
    is a warning line naming it, and the walk goes on."""

    def __init__(self, paths: Sequence[Path], recursive: bool = True, wanted: Callable[[str], bool] = is_image_name,
                 descend: Callable[[Path], bool] = lambda folder: True):
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{display_path(missing[0])}: no such file or folder")
        self.paths, self.recursive, self.wanted, self.descend, self.skipped = list(paths), recursive, wanted, descend, 0
        self._warned: set[str] = set()  # the listing may be walked twice (a first file, then all): each warning once
        self._odd_named = False  # names that are not text: one warning for all

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)

    def __iter__(self) -> Iterator[Path]:
        self.skipped = 0
        walked: dict[tuple[int, int], str] = {}  # (device, inode) of each folder walked -> its name
        for path in self.paths:
            if path.is_dir():
                yield from self._walk(path, walked)
            elif path.is_file():
                yield self._checked_name(path)
            else:
                self._warn(f"{display_path(path)}: not a regular file (a FIFO, socket or device); skipped")

    def _checked_name(self, path: Path) -> Path:
        if not self._odd_named and odd_name(path):
            log.warning("%s: the file name is not valid text; rows show it escaped (\\xNN per odd byte)", display_path(path))
            self._odd_named = True
        return path

    def _walk(self, top: Path, walked: dict[tuple[int, int], str]) -> Iterator[Path]:
        stack = [self._entries(top, walked)]
        while stack:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                continue
            path = Path(entry.path)
            try:
                folder, regular = entry.is_dir(), entry.is_file()
            except OSError as e:  # a link to itself (ELOOP), a folder that may not be searched
                self._warn(f"{display_path(path)}: cannot read ({e.strerror or e}); skipped")
                continue
            if folder:
                if self.recursive and self.descend(path):
                    stack.append(self._entries(path, walked))
            elif regular:
                if self.wanted(entry.name):
                    yield self._checked_name(path)
                else:
                    self.skipped += 1
            elif entry.is_symlink() and not os.path.exists(path):
                self._warn(f"{display_path(path)}: a broken symbolic link; skipped")
            else:
                self._warn(f"{display_path(path)}: not a regular file (a FIFO, socket or device); skipped")

    def _entries(self, folder: Path, walked: dict[tuple[int, int], str]) -> Iterator[os.DirEntry]:
        """The folder's entries in sorted order; none, with a warning, when it cannot be read or
        was walked already (through another link)."""
        try:
            status = folder.stat()
            key = (status.st_dev, status.st_ino)
            if key in walked:
                self._warn(f"{display_path(folder)}: the same folder as {walked[key]}, already listed (a symbolic link); skipped")
                return iter(())
            walked[key] = display_path(folder)
            with os.scandir(folder) as entries:
                return iter(_SORTED(entries))
        except OSError as e:
            self._warn(f"{display_path(folder)}: cannot read the folder ({e.strerror or e}); skipped")
            return iter(())

    def after(self, last: str | None) -> Iterator[Path]:
        """The files after the one shown as ``last`` (``display_path``) in this order: what an
        interrupted run still has to do. Everything when ``last`` is None; ``ResumeError``
        (before anything is yielded) when ``last`` is no longer listed."""
        files = iter(self)
        if last is not None:
            for path in files:
                if display_path(path) == last:
                    break
            else:
                raise ResumeError(f"--resume: the last file the earlier run wrote, {last}, is no longer among the inputs; "
                                  "run again without --resume")
        yield from files
