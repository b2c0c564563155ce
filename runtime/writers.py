"""Prediction rows to CSV, JSON Lines, JSON, Parquet or a terminal table.

CSV and JSON Lines are written and flushed row by row, so a run killed after hours keeps every
finished row; Parquet is written a row group at a time; JSON, one document, at the end.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import IO, Protocol

FORMATS = (".csv", ".jsonl", ".json", ".parquet")
SCALARS = ("path", "status", "label", "confidence", "ood_score", "unknown")  # then the top-k lists


class RowWriter(Protocol):
    def write(self, row: dict) -> None: ...
    def close(self) -> None: ...


def flat(row: dict, top_k: int) -> dict:
    """Lists become ``top1_label, top1_prob, ...`` columns for CSV and the terminal."""
    out = {k: row[k] for k in SCALARS}
    for i in range(top_k):
        has = i < len(row["top_labels"])
        out[f"top{i + 1}_label"] = row["top_labels"][i] if has else ""
        out[f"top{i + 1}_prob"] = row["top_probs"][i] if has else ""
    return out


class CsvWriter:
    def __init__(self, path: Path, top_k: int):
        self.top_k = top_k
        self.file: IO[str] = open(path, "w", newline="", encoding="utf-8")
        columns = list(flat({**dict.fromkeys(SCALARS, ""), "top_labels": [], "top_probs": []}, top_k))
        self.writer = csv.DictWriter(self.file, fieldnames=columns)
        self.writer.writeheader()

    def write(self, row: dict) -> None:
        self.writer.writerow(flat(row, self.top_k))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class JsonLinesWriter:
    def __init__(self, path: Path):
        self.file: IO[str] = open(path, "w", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class JsonWriter:
    def __init__(self, path: Path):
        self.path, self.rows = path, []

    def write(self, row: dict) -> None:
        self.rows.append(row)

    def close(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.rows, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


class ParquetWriter:
    ROW_GROUP = 1024

    def __init__(self, path: Path):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise SystemExit("simpsons-infer: error: Parquet output needs pyarrow: pip install 'simpsons-classifier[parquet]'") from None
        self.pa = pa
        schema = pa.schema([
            ("path", pa.string()), ("status", pa.string()), ("label", pa.string()),
            ("confidence", pa.float64()), ("ood_score", pa.float64()), ("unknown", pa.bool_()),
            ("top_labels", pa.list_(pa.string())),
            ("top_probs", pa.list_(pa.float64())),
        ])
        self.writer, self.schema, self.rows = pq.ParquetWriter(path, schema), schema, []

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self._flush()
        self.writer.close()


class TableWriter:
    """Aligned columns on stdout, one line per file as it is classified."""

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


def open_writer(path: Path | None, top_k: int) -> RowWriter:
    """Pick the writer from the output's extension; None means the terminal."""
    if path is None:
        return TableWriter(top_k)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown output format {suffix!r}; use one of {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        return CsvWriter(path, top_k)
    if suffix == ".jsonl":
        return JsonLinesWriter(path)
    if suffix == ".json":
        return JsonWriter(path)
    return ParquetWriter(path)
