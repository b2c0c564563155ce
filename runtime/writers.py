"""Prediction rows to CSV, JSON Lines, JSON, Parquet or a terminal table.

CSV and JSON Lines are written a whole row at a time and flushed, so a run killed after hours
keeps every finished row (and ``--resume`` continues after the last one); a row that fails to
be written (a full disk) is cut back off, so the file never ends in half a row. Parquet and
JSON are written to a temporary file that replaces the output only when the run completes: a
killed run leaves the previous file intact. Every file output is locked for the run, so a
second run writing the same file is refused instead of interleaving with the first.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import IO, Protocol

from runtime.errors import SimpsonsError
from runtime.files import Lock, atomic_write, check_writable, remove_stale_temporaries, temporary_path

FORMATS = (".csv", ".jsonl", ".json", ".parquet")
STREAMED = (".csv", ".jsonl")  # written row by row: these can be resumed
SCALARS = ("path", "status", "label", "confidence", "ood_score", "unknown")  # then the top-k lists


class OutputError(SimpsonsError):
    """The output cannot be written as asked."""


class RowWriter(Protocol):
    last_path: str | None  # the last row's path already in the file (for --resume)

    def write(self, row: dict) -> None: ...
    def close(self) -> None: ...  # the run is complete (or stops early): keep what was written
    def abort(self) -> None: ...  # the run failed: leave the previous output as it was


def flat(row: dict, top_k: int) -> dict:
    """Lists become ``top1_label, top1_prob, ...`` columns for CSV and the terminal."""
    out = {k: row[k] for k in SCALARS}
    for i in range(top_k):
        has = i < len(row["top_labels"])
        out[f"top{i + 1}_label"] = row["top_labels"][i] if has else ""
        out[f"top{i + 1}_prob"] = row["top_probs"][i] if has else ""
    return out


class StreamWriter:
    """CSV or JSON Lines, one whole line per row; with ``resume``, appends after the last
    whole row an earlier run left (a half-written last line is cut off first)."""

    def __init__(self, path: Path, top_k: int, resume: bool):
        self.path, self.top_k, self.csv = path, top_k, path.suffix.lower() == ".csv"
        self.lock = Lock(path)
        self.last_path = self._trim() if resume and path.is_file() and path.stat().st_size else None
        self.file: IO[str] = open(path, "a" if self.last_path is not None else "w", newline="", encoding="utf-8")
        if self.csv and self.last_path is None:
            self._line(",".join(self.columns()) + "\r\n")

    def columns(self) -> list[str]:
        return list(flat({**dict.fromkeys(SCALARS, ""), "top_labels": [], "top_probs": []}, self.top_k))

    def _trim(self) -> str | None:
        """Cut a half-written last line; return the path of the last whole row (None: only a header)."""
        with open(self.path, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            f.truncate(end)
        lines = data[:end].decode("utf-8").splitlines()
        if self.csv:
            if lines and lines[0] != ",".join(self.columns()):
                raise OutputError(f"{self.path}: its columns differ from this run's (another --top-k?); cannot --resume into it")
            lines = lines[1:]
        if not lines:
            return None
        return next(csv.reader([lines[-1]]))[0] if self.csv else json.loads(lines[-1])["path"]

    def _line(self, text: str) -> None:
        position = self.file.tell()
        try:
            self.file.write(text)
            self.file.flush()
        except OSError:
            self.file.truncate(position)  # no half row left behind (e.g. the disk filled up)
            raise

    def write(self, row: dict) -> None:
        if self.csv:
            buffer = io.StringIO()
            csv.writer(buffer).writerow(flat(row, self.top_k).values())
            self._line(buffer.getvalue())
        else:
            self._line(json.dumps(row) + "\n")

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # what could be written was flushed row by row
        self.lock.release()

    abort = close  # finished rows are worth keeping either way


class JsonWriter:
    """One JSON document, written when the run completes."""

    def __init__(self, path: Path):
        self.path, self.rows, self.last_path = path, [], None
        self.lock = Lock(path)

    def write(self, row: dict) -> None:
        self.rows.append(row)

    def close(self) -> None:
        try:
            atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(self.rows, indent=1), encoding="utf-8"))
        finally:
            self.lock.release()

    def abort(self) -> None:
        self.lock.release()


class ParquetWriter:
    """Row groups into a temporary file, renamed over the output when the run completes."""

    ROW_GROUP = 1024

    def __init__(self, path: Path):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise OutputError("Parquet output needs pyarrow: pip install 'simpsons-classifier[parquet]'") from None
        self.pa, self.path, self.last_path = pa, path, None
        self.schema = pa.schema([
            ("path", pa.string()), ("status", pa.string()), ("label", pa.string()),
            ("confidence", pa.float64()), ("ood_score", pa.float64()), ("unknown", pa.bool_()),
            ("top_labels", pa.list_(pa.string())), ("top_probs", pa.list_(pa.float64())),
        ])
        self.lock = Lock(path)
        self.tmp = temporary_path(path)
        self.writer, self.rows = pq.ParquetWriter(self.tmp, self.schema), []

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        try:
            self._flush()
            self.writer.close()
            self.tmp.replace(self.path)
            remove_stale_temporaries(self.path.parent, self.path.name)
        except BaseException:
            self.abort()
            raise
        self.lock.release()

    def abort(self) -> None:
        try:
            self.writer.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)
        self.lock.release()


class TableWriter:
    """Aligned columns on stdout, one line per file as it is classified."""

    last_path = None

    def __init__(self, top_k: int, stream: IO[str] | None = None):
        self.top_k, self.stream = top_k, stream or sys.stdout
        self.stream.write(f"{'label':<28} {'conf':>6}  {'path'}\n")

    def write(self, row: dict) -> None:
        if row["status"] != "ok":
            line = f"{'-':<28} {'-':>6}  {row['path']}  [{row['status']}]"
        else:
            shown = 0 if row["unknown"] else 1  # an unknown row names its best class among the others
            others = ", ".join(f"{lab} {p:.2f}" for lab, p in zip(row["top_labels"][shown:], row["top_probs"][shown:]))
            line = f"{row['label']:<28} {row['confidence']:>6.3f}  {row['path']}" + (f"  ({others})" if others else "")
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass

    abort = close


def open_writer(path: Path | None, top_k: int, resume: bool = False) -> RowWriter:
    """Pick the writer from the output's extension (None: the terminal), after checking the
    folder can be written and no other run holds the output."""
    if path is None:
        if resume:
            raise OutputError("--resume needs -o FILE.csv or FILE.jsonl (the rows an earlier run wrote)")
        return TableWriter(top_k)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"{path}: unknown output format {suffix!r}; use one of {', '.join(FORMATS)}")
    if resume and suffix not in STREAMED:
        raise OutputError(f"--resume needs a .csv or .jsonl output (written row by row), not {suffix}")
    check_writable(path.parent)
    if suffix in STREAMED:
        return StreamWriter(path, top_k, resume)
    return JsonWriter(path) if suffix == ".json" else ParquetWriter(path)
