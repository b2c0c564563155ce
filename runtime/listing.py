"""The files ``simpsons-infer`` classifies, streamed: folders are walked in sorted order, one
directory at a time, so a million files never sit in one list, the order is the same on every
run (which is what lets ``--resume`` skip what an earlier run wrote), and any name can be shown.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Sequence
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


def _walk(folder: Path, recursive: bool, skipped: list[int]) -> Iterator[Path]:
    with os.scandir(folder) as entries:
        ordered = sorted(entries, key=lambda e: os.fsencode(e.name))
    for entry in ordered:
        if entry.is_dir(follow_symlinks=True):
            if recursive:
                yield from _walk(Path(entry.path), recursive, skipped)
        elif entry.is_file(follow_symlinks=True):
            if is_image_name(entry.name):
                yield Path(entry.path)
            else:
                skipped[0] += 1


class Listing:
    """Image files under ``paths`` (files named directly are taken as they are), in a stable
    order, produced as they are consumed; ``skipped`` counts the non-image files passed over."""

    def __init__(self, paths: Sequence[Path], recursive: bool = True):
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{display_path(missing[0])}: no such file or folder")
        self.paths, self.recursive, self._skipped = list(paths), recursive, [0]

    @property
    def skipped(self) -> int:
        return self._skipped[0]

    def __iter__(self) -> Iterator[Path]:
        warned = False
        for path in itertools.chain.from_iterable(
            _walk(p, self.recursive, self._skipped) if p.is_dir() else [p] for p in self.paths
        ):
            if not warned and odd_name(path):
                log.warning("%s: the file name is not valid text; rows show it escaped (\\xNN per odd byte)", display_path(path))
                warned = True
            yield path

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
