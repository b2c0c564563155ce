"""The files ``simpsons-infer`` classifies, streamed: folders are walked in sorted order, one
directory at a time, so a million files never sit in one list, the order is the same on every
run (which is what lets ``--resume`` skip what an earlier run wrote), and any name can be shown.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from runtime.errors import SimpsonsError
from runtime.labels import is_image_name


class ResumeError(SimpsonsError):
    """An earlier run's output cannot be continued."""


SEPARATOR_IS_BACKSLASH = os.sep == "\\"  # Windows: a backslash is never part of a name, so it is shown as it is
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def _shown(c: str) -> str:
    if c == "\\":
        return c if SEPARATOR_IS_BACKSLASH else "\\\\"
    if 0xDC80 <= ord(c) <= 0xDCFF:  # a byte that is not UTF-8, as Python holds it
        return f"\\x{ord(c) - 0xDC00:02x}"
    if c.isprintable():
        return c
    return f"\\x{ord(c):02x}" if ord(c) < 0x80 else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"


def display_path(path: str | os.PathLike) -> str:
    """A file name as text that any output format can hold: a byte that is not UTF-8 becomes
    ``\\xNN`` (80 to ff; Python keeps it as a surrogate, which UTF-8 writers refuse), a line
    break or other control character ``\\xNN`` (below 80) or ``\\uNNNN``, so a CSV row stays
    one line, and a backslash ``\\\\``: two different names are never shown alike (a file
    literally named ``a\\xff.jpg`` and one with the byte ff were, and one of them was lost).
    Ordinary names are unchanged; ``from_display`` reverses it. (On Windows the backslash
    separates folders, is never part of a name, and is shown as it is.)"""
    text = os.fspath(path)
    if text.isprintable() and (SEPARATOR_IS_BACKSLASH or "\\" not in text):
        return text
    return "".join(map(_shown, text))


def from_display(shown: str) -> str:
    """The name ``display_path`` shows as ``shown``: what opens the file a manifest row names."""
    if "\\" not in shown:  # nothing escaped: most names
        return shown

    def one(escape: re.Match) -> str:
        code = escape.group(1)
        if code == "\\":
            return code
        value = int(code[1:], 16)
        return chr(0xDC00 + value if code[0] == "x" and value >= 0x80 else value)

    return _ESCAPE.sub(one, shown)


def odd_name(path: str | os.PathLike) -> bool:
    """The name is not printable text (a byte that is not UTF-8, a control character): shown
    escaped, it is not the text other programs would read or write for it."""
    return not os.fspath(path).isprintable()


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
