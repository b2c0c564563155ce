"""Progress bars (tqdm: elapsed time, rate and ETA) on stderr, silent when stderr is not a
terminal (logs, CI, pipes)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None, desc: str, enabled: bool | None = None) -> Iterator[T]:
    """Yield ``items`` unchanged while a bar counts them."""
    from tqdm import tqdm

    shown = sys.stderr.isatty() if enabled is None else enabled
    yield from tqdm(items, total=total, desc=desc, disable=not shown, file=sys.stderr, dynamic_ncols=True,
                    mininterval=0.2, leave=False)
