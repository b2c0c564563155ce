"""Prediction rows to CSV, JSON Lines, JSON, Parquet or a terminal table.

CSV and JSON Lines are written a whole row at a time and flushed, so a run killed after hours
keeps every finished row (and ``--resume`` continues after the last one); a row that fails to
be written (a full disk) is cut back off, so the file never ends in half a row. Parquet and
JSON are written, row by row, to a temporary file that replaces the output only when the run
completes: a killed run leaves the previous file intact. Every file output is locked for the
run, so a second run writing the same file is refused instead of interleaving with the first.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol

from runtime.errors import SimpsonsError
from runtime.files import Lock, check_writable, real_path, remove_stale_temporaries, temporary_path

FORMATS = (".csv", ".jsonl", ".json", ".parquet")
STREAMED = (".csv", ".jsonl")  # written row by row: these can be resumed
SCALARS = ("path", "status", "label", "confidence", "ood_score", "unknown")  # then the top-k lists
ROW_KEYS = (*SCALARS, "top_labels", "top_probs")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
MAX_LINE = 1 << 20  # longer than any row this command writes


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


def spreadsheet_safe(value):
    """A text cell as a spreadsheet will not run it: one that starts like a formula (``=``,
    ``+``, ``-``, ``@``, tab, CR: a file named ``=cmd|' -C calc'!A0.jpg``, a class name) gets
    a leading apostrophe, which spreadsheets hide and read as "this is text". A cell that
    starts with an apostrophe gets one too, so ``from_spreadsheet`` gives every text back."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def from_spreadsheet(text: str) -> str:
    return text[1:] if text.startswith("'") else text


class StreamWriter:
    """CSV or JSON Lines, one whole line per row, each written in one piece, unbuffered. A
    row the disk cannot take (a full disk) is cut back off, so the file only ever holds whole
    rows, and the error says which file. With ``resume``, an earlier run's file is checked to
    be rows of this command for this model (``labels``) before anything in it changes; then a
    half-written last line (a kill mid-row) is cut off and rows are appended after it."""

    def __init__(self, path: Path, top_k: int, resume: bool, labels: Sequence[str]):
        self.path, self.top_k, self.csv, self.labels = path, top_k, path.suffix.lower() == ".csv", set(labels)
        self.columns = list(flat({**dict.fromkeys(SCALARS, ""), "top_labels": [], "top_probs": []}, top_k))
        self.lock = Lock(path)
        self.size, self.last_path = self._resume_point() if resume and path.is_file() else (0, None)
        # Appending: each write lands at the end, also after a cut; without --resume, the earlier file goes.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if resume else os.O_TRUNC)
        self.file = open(os.open(path, flags, 0o666), "ab", buffering=0)
        try:
            if resume:
                os.ftruncate(self.file.fileno(), self.size)  # the half-written last line
            if self.csv and self.size == 0:
                self._line(",".join(self.columns) + "\r\n")
        except BaseException:
            self.close()
            raise

    def _refuse(self, number: int, why: str) -> OutputError:
        return OutputError(f"{self.path}: line {number} {why}, so it is not the rows of an earlier run of this model; "
                           "cannot --resume into it (choose another -o, or leave out --resume to replace it)")

    def _resume_point(self) -> tuple[int, str | None]:
        """(bytes of the whole rows, the path of the last one or None), after checking every
        line; nothing is changed before the file passes. Lines are read at most
        ``MAX_LINE`` bytes at a time, so a binary file without line breaks is not read whole."""
        size, last = 0, None
        with open(self.path, "rb") as f:
            for number, line in enumerate(iter(lambda: f.readline(MAX_LINE), b""), 1):
                if not line.endswith(b"\n"):
                    if len(line) == MAX_LINE:
                        raise self._refuse(number, f"is longer than {MAX_LINE} bytes")
                    self._check_half_row(number, line)
                    break
                try:
                    text = line.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    raise self._refuse(number, "is not UTF-8 text") from None
                path = self._check_header(number, text) if self.csv and number == 1 else self._check_row(number, text)
                last = path if path is not None else last
                size += len(line)
        return size, last

    def _check_half_row(self, number: int, line: bytes) -> None:
        """A last line without its line break is what a kill mid-row leaves: the start of a
        row (or of the header) of ours, nothing else."""
        start = (",".join(self.columns) if number == 1 else "") if self.csv else '{"path": '
        start_bytes = start.encode("utf-8")
        if line[: len(start_bytes)] != start_bytes[: len(line)]:
            raise self._refuse(number, "is neither a whole row nor the start of one")

    def _check_header(self, number: int, text: str) -> None:
        if text != ",".join(self.columns):
            raise self._refuse(number, f"holds other columns than this run's ({len(self.columns)} with --top-k {self.top_k})")

    def _check_row(self, number: int, text: str) -> str:
        """The row's path, after checking its shape and that its labels are this model's."""
        if self.csv:
            cells = next(csv.reader([text]), [])
            if len(cells) != len(self.columns):
                raise self._refuse(number, f"has {len(cells)} cells where the header has {len(self.columns)}")
            row = dict(zip(self.columns, cells))
            path = from_spreadsheet(row["path"])
            labels = [from_spreadsheet(row[c]) for c in self.columns if c == "label" or c.endswith("_label")]
            labels = [label for label in labels if label]
        else:
            try:
                row = json.loads(text)
            except ValueError:
                raise self._refuse(number, "is not JSON") from None
            if not isinstance(row, dict) or set(row) != set(ROW_KEYS) or not isinstance(row["path"], str) \
                    or not isinstance(row["top_labels"], list):
                raise self._refuse(number, f"is not a row (expected the keys {', '.join(ROW_KEYS)})")
            path = row["path"]
            labels = [label for label in (row["label"], *row["top_labels"]) if label is not None]
        foreign = next((label for label in labels if not isinstance(label, str) or label not in self.labels), None)
        if foreign is not None:
            raise self._refuse(number, f"names the class {str(foreign)[:60]!r}, which this model does not have")
        return path

    def _line(self, text: str) -> None:
        data = text.encode("utf-8")
        try:
            done = 0
            while done < len(data):  # an unbuffered write may take part of the row
                done += self.file.write(data[done:])
        except OSError as e:
            raise self._cut_back(e) from None
        self.size += len(data)

    def _cut_back(self, error: OSError) -> OutputError:
        """Cut the file back to its last whole row; the error to report, saying what is kept."""
        message = f"{self.path}: cannot write ({error.strerror or error})"
        if not stat.S_ISREG(os.fstat(self.file.fileno()).st_mode):  # a device or a pipe keeps nothing
            return OutputError(message)
        try:
            os.ftruncate(self.file.fileno(), self.size)
            return OutputError(f"{message}; every row in it is whole")
        except OSError:
            return OutputError(f"{message}; its last row may be cut short")

    def write(self, row: dict) -> None:
        if self.csv:
            buffer = io.StringIO()
            csv.writer(buffer).writerow(spreadsheet_safe(value) for value in flat(row, self.top_k).values())
            self._line(buffer.getvalue())
        else:
            self._line(json.dumps(row) + "\n")

    def close(self) -> None:
        self.file.close()  # nothing buffered: every row went out whole in its own write
        self.lock.release()

    abort = close  # finished rows are worth keeping either way


class ReplacingWriter:
    """Rows go, as they come, to a temporary file beside the output (memory stays flat), which
    replaces the output when the run completes: a killed or failed run leaves the previous
    file as it was. Through a symbolic link, the file it points to is replaced, not the link.
    A format defines ``add(row)``, ``finish()`` (the temporary complete and closed) and
    ``discard()`` (the temporary closed, to be deleted)."""

    last_path = None

    def __init__(self, path: Path):
        self.path, self.lock = path, Lock(path)
        self.target = real_path(path)
        self.tmp = temporary_path(self.target)

    def write(self, row: dict) -> None:
        try:
            self.add(row)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write ({e.strerror or e}); the earlier output is untouched") from None

    def close(self) -> None:
        try:
            self.finish()
            self.tmp.replace(self.target)
            remove_stale_temporaries(self.target.parent, self.target.name)
        except BaseException:
            self.abort()
            raise
        self.lock.release()

    def abort(self) -> None:
        try:
            self.discard()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)
        self.lock.release()


class JsonWriter(ReplacingWriter):
    """One JSON list of rows, one row per line."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.file = open(self.tmp, "w", encoding="utf-8")
        self.file.write("[")
        self.separator = "\n"

    def add(self, row: dict) -> None:
        self.file.write(self.separator + json.dumps(row))
        self.separator = ",\n"

    def finish(self) -> None:
        self.file.write("\n]\n")
        self.file.close()

    def discard(self) -> None:
        self.file.close()


class ParquetWriter(ReplacingWriter):
    """Row groups of ``ROW_GROUP`` rows."""

    ROW_GROUP = 1024

    def __init__(self, path: Path):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise OutputError("Parquet output needs pyarrow: pip install 'simpsons-classifier[parquet]'") from None
        super().__init__(path)
        self.pa = pa
        self.schema = pa.schema([
            ("path", pa.string()), ("status", pa.string()), ("label", pa.string()),
            ("confidence", pa.float64()), ("ood_score", pa.float64()), ("unknown", pa.bool_()),
            ("top_labels", pa.list_(pa.string())), ("top_probs", pa.list_(pa.float64())),
        ])
        self.writer, self.rows = pq.ParquetWriter(self.tmp, self.schema), []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def finish(self) -> None:
        self._flush()
        self.writer.close()

    def discard(self) -> None:
        self.writer.close()


class TableWriter:
    """Aligned columns on stdout, one line per file as it is classified."""

    last_path = None

    def __init__(self, top_k: int, stream: IO[str] | None = None):
        self.top_k, self.stream = top_k, stream or sys.stdout
        self.stream.write(f"{'label':<28} {'conf':>6}  {'path'}\n")

    def write(self, row: dict) -> None:
        try:
            self.stream.write(self.line(row) + "\n")
            self.stream.flush()
        except OSError as e:  # a closed pipe, a full disk behind a redirection
            raise OutputError(f"standard output: cannot write ({e.strerror or e})") from None

    def line(self, row: dict) -> str:
        if row["status"] != "ok":
            return f"{'-':<28} {'-':>6}  {row['path']}  [{row['status']}]"
        shown = 0 if row["unknown"] else 1  # an unknown row names its best class among the others
        others = ", ".join(f"{lab} {p:.2f}" for lab, p in zip(row["top_labels"][shown:], row["top_probs"][shown:]))
        return f"{row['label']:<28} {row['confidence']:>6.3f}  {row['path']}" + (f"  ({others})" if others else "")

    def close(self) -> None:
        pass

    abort = close


def open_writer(path: Path | None, top_k: int, resume: bool = False, labels: Sequence[str] = ()) -> RowWriter:
    """Pick the writer from the output's extension (None: the terminal), after checking the
    folder can be written and no other run holds the output. ``labels``: every label the
    model can give, to tell its rows from another model's when resuming."""
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
        return StreamWriter(path, top_k, resume, labels)
    return JsonWriter(path) if suffix == ".json" else ParquetWriter(path)
