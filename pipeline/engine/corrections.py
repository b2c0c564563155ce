"""Corrections as data: what a person decided on the audit page (or in ``label_issues.csv``),
one CSV file that ``simpsons manifest --corrections`` applies to the scanned files as one pure
step, before duplicates, leaks and the split are decided. A relabelled frame is then
deduplicated, grouped and split under its new label, and every decision is a record in the
manifest (``original_label``, ``review``, ``review_note``, ``corrected``) instead of a file
moved by hand, which would leave no trace and cost its fingerprint.

``corrections.csv``, one row per file (other columns are ignored: ``label_issues.csv`` keeps
its ranking beside these):

| column | meaning |
|---|---|
| path | as the manifest stores it: relative to the data root, ``/``-separated |
| action | ``relabel``, ``exclude`` or ``keep``; empty: no decision (a row of ``label_issues.csv`` left as written) |
| label | for ``relabel``: the new class, one of the manifest's classes |
| note | free text, kept in the manifest's ``review_note`` |
| hash | optional: the file's content hash (the manifest's ``hash``) when it was reviewed |

A file whose bytes changed since it was reviewed (its hash differs) is not corrected: the
decision was about other pixels. It is reported (``review = stale``), not applied silently.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import xxhash

from pipeline.engine.schema import ACTIONS, Review, Status
from runtime.errors import SimpsonsError
from runtime.writers import from_spreadsheet

COLUMNS = ["path", "action", "label", "note", "hash"]  # the file's columns, in the order the audit writes them
REQUIRED = ("path", "action")
SHOWN = 20  # bad lines named in the error; the rest are counted
HEX = re.compile(r"[0-9a-fA-F]{1,16}")
TABLE = {"line": pl.Int64, **dict.fromkeys(COLUMNS, pl.String), "malformed": pl.String}


class CorrectionsError(SimpsonsError):
    """A corrections file that cannot be applied as it is: nothing is written."""


@dataclass(frozen=True)
class Corrections:
    """A corrections file as read: one row per line that holds one (``line`` numbers it as in
    the file; the cells as written, ``malformed`` saying what is wrong with a line's shape),
    and the file's content hash, which the manifest records."""

    source: str
    table: pl.DataFrame
    hash: str


NONE = Corrections("", pl.DataFrame(schema=TABLE), "")


def read(path: Path) -> Corrections:
    """Read a corrections file. A file that is not a CSV with ``path`` and ``action`` columns is
    one error; a line that is wrong in itself is kept, marked, for ``check`` to list with the
    others."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorrectionsError(f"{path}: cannot read the corrections ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError:
        raise CorrectionsError(f"{path}: not a UTF-8 CSV file (columns {', '.join(COLUMNS)})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        missing = [name for name in REQUIRED if name not in header]
        if missing:
            raise CorrectionsError(f"{path}: line 1 must name the columns {', '.join(COLUMNS)} (lacks {', '.join(missing)})")
        rows = [_row(header, cells, reader.line_num) for cells in reader if any(c.strip() for c in cells)]
    except csv.Error as e:
        raise CorrectionsError(f"{path}:{reader.line_num}: not CSV ({e})") from None
    return Corrections(str(path), pl.DataFrame(rows, schema=TABLE, orient="row"), xxhash.xxh3_64_hexdigest(data))


def _row(header: list[str], cells: list[str], line: int) -> tuple:
    """One line as (line, path, action, label, note, hash, malformed). A cell a spreadsheet
    writer protected (``'=...``) reads back as written."""
    named = dict(zip(header, (from_spreadsheet(c) for c in cells)))
    malformed = f"{len(cells)} cells where line 1 names {len(header)} (a comma in a note? quote it)" if len(cells) > len(header) else None
    return (line, named.get("path") or "", (named.get("action") or "").strip().lower(), (named.get("label") or "").strip(),
            named.get("note") or "", (named.get("hash") or "").strip(), malformed)


def check(corrections: Corrections, paths: pl.Series, classes: list[str]) -> None:
    """Raise one error naming every line that cannot be applied to these files (``paths``, as
    the manifest stores them) and ``classes`` (the manifest's): nothing is decided on a file
    that is partly wrong."""
    bad = problems(corrections.table, paths, classes)
    if bad:
        shown = "; ".join(bad[:SHOWN]) + (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
        raise CorrectionsError(f"{corrections.source}: {len(bad)} bad line(s), nothing written: {shown}")


def problems(table: pl.DataFrame, paths: pl.Series, classes: list[str]) -> list[str]:
    """``line N: why`` for each bad line, in line order. A path may come back on another line
    with the same decision (a file merged from two reviews), never with another one."""
    known = table.select(pl.col("path").is_in(paths.implode())).to_series()
    first: dict[str, tuple[int, tuple[str, str]]] = {}  # path -> (line, decision) of its first line with an action
    out = []
    for row, in_data in zip(table.iter_rows(named=True), known):
        why = _why(row, in_data, classes)
        if row["action"]:
            decision = (row["action"], row["label"] if row["action"] == Review.RELABEL else "")
            line, earlier = first.setdefault(row["path"], (row["line"], decision))
            if not why and earlier != decision:
                why = f"{row['path']} is also on line {line}, with another decision"
        if why:
            out.append(f"line {row['line']}: {why}")
    return out


def _why(row: dict, in_data: bool, classes: list[str]) -> str | None:
    """What is wrong with one line on its own, or None."""
    action, label = row["action"], row["label"]
    if row["malformed"]:
        return row["malformed"]
    if not row["path"]:
        return "no path"
    if action and action not in ACTIONS:
        return f"action {action!r} is not one of {', '.join(ACTIONS)}"
    if not in_data:
        return f"{row['path']} is not a file of the data (paths are relative to the data root, as in the manifest)"
    if action == Review.RELABEL and label not in classes:
        near = difflib.get_close_matches(label, classes, n=1)
        return ("relabel needs a label" if not label else
                f"{label!r} is not one of the {len(classes)} classes" + (f" (did you mean {near[0]!r}?)" if near else ""))
    if row["hash"] and not HEX.fullmatch(row["hash"]):
        return f"hash {row['hash']!r} is not a content hash (up to 16 hex digits, as in the manifest)"
    return None


def apply(df: pl.DataFrame, corrections: Corrections) -> pl.DataFrame:
    """The scanned files (in path order, ``hash`` as a number) with the ``check``-ed corrections
    applied: a relabelled row gets its new ``label``, an excluded usable row the status
    ``excluded_by_review``, and every row ``original_label``, ``review``, ``review_note`` and
    ``corrected`` (the row changed). A decision about a file whose bytes changed since it was
    reviewed is ``stale`` and changes nothing."""
    decisions = (corrections.table.filter(pl.col("action") != "").unique("path", keep="first", maintain_order=True)
                 .select("path", "line", pl.col("action").alias("_action"), pl.col("label").alias("_label"),
                         pl.col("note").alias("_note"),
                         pl.col("hash").replace("", None).str.to_integer(base=16, dtype=pl.UInt64).alias("_hash")))
    out = df.join(decisions, on="path", how="left", maintain_order="left")
    stale = pl.col("_hash").is_not_null() & pl.col("hash").ne_missing(pl.col("_hash"))
    out = out.with_columns(pl.col("label").alias("original_label"),
                           pl.when(stale).then(pl.lit(Review.STALE)).otherwise(pl.col("_action")).alias("review"),
                           pl.when(stale).then(pl.format("not applied: the file changed since it was reviewed (corrections line {})",
                                                         pl.col("line")))
                           .otherwise(pl.col("_note").replace("", None)).alias("review_note"))
    excluded = (pl.col("review") == Review.EXCLUDE) & (pl.col("status") == Status.OK)
    out = out.with_columns(
        pl.when(pl.col("review") == Review.RELABEL).then(pl.col("_label")).otherwise(pl.col("label")).alias("label"),
        pl.when(excluded).then(pl.lit(Status.EXCLUDED_BY_REVIEW)).otherwise(pl.col("status")).alias("status"),
        pl.when(excluded).then(pl.concat_str(pl.lit("excluded by review"), pl.col("review_note"), separator=": ", ignore_nulls=True))
        .otherwise(pl.col("reason")).alias("reason"),
    )
    return out.with_columns(
        (pl.col("label").ne_missing(pl.col("original_label")) | (pl.col("status") == Status.EXCLUDED_BY_REVIEW)).alias("corrected")
    ).drop("line", "_action", "_label", "_note", "_hash")
