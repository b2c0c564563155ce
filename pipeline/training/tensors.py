"""Reading a file of tensors (a checkpoint, or a state dict given as weights) without running
code from it, and with one clear line on any failure. torch is imported only to read: the
file checks before it serve the command line, which must not pay for torch to refuse a path."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

from runtime.errors import SimpsonsError


def file_problem(path: Path, what: str) -> str | None:
    """What makes ``path`` no ``what`` file at all (missing, a folder, empty), or None. Needs no
    torch: the command line asks it first, so a mistyped path costs a second, not torch's import."""
    if path.is_dir():
        return f"{path}: is a folder, not a {what} file"
    if not path.is_file():
        return f"{path}: {what} not found"
    if path.stat().st_size == 0:
        return f"{path}: cannot load {what} (the file is empty or cut short)"
    return None


def read_tensors(path: Path, what: str, error: type[SimpsonsError]) -> object:
    """What ``torch.load(weights_only=True)`` reads from ``path`` (a checkpoint or weights
    file); any failure is one ``error`` line naming the file. torch raises nearly anything on a
    damaged file: EOFError for a cut one (which click would take for Ctrl-C), UnpicklingError,
    with a multi-line warning, for a pickle holding code (never run)."""
    import torch

    if problem := file_problem(path, what):
        raise error(problem)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except EOFError:
        raise error(f"{path}: cannot load {what} (the file is empty or cut short)") from None
    except pickle.UnpicklingError:
        raise error(f"{path}: cannot load {what} (not a PyTorch file, or one holding more than tensors)") from None
    except Exception as e:  # noqa: BLE001 - see the docstring
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise error(f"{path}: cannot load {what} ({reason})") from None
