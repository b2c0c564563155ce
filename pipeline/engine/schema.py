"""The manifest's vocabulary: every status and split a row can have, and every column, defined
here once. The manifest is the contract between the stages; they name these values, never a
bare string.

``manifest.parquet``, one row per file found under the data root:

| column | meaning |
|---|---|
| path | relative to the data root, ``/``-separated; shown as ``display_path`` shows it (a byte that is not UTF-8 as ``\\xNN``, a backslash as ``\\\\``): ``on_disk`` opens it |
| label | the class (folder name, or the test file's name prefix); null where none |
| split | a ``Split``: train, val, test or excluded |
| status | a ``Status``: why a row is used or not |
| reason | for a row that is not ``ok``, a sentence saying why |
| source | ``train`` (a class folder) or ``test`` (the test folder) |
| hash | xxh3-64 of the bytes, hex |
| size_bytes, width, height, format | the file's size and the image's header |
| phash | 64-bit DCT perceptual hash (near-duplicate candidates) |
| group, group_size | the near-duplicate group (the path of its first member) and its size |
| duplicate_of | for a ``duplicate``, the path of the kept copy |
| leak | for a training image, the test image it is a copy of |
| pixel_mean, pixel_sq_mean | per-channel moments at a small size (the training mean/std) |
| original_label | the label the data's layout gives, before any correction (``label`` is after) |
| review | the correction applied to the row (``relabel``, ``exclude``, ``keep``), ``stale`` for one not applied because the file changed since it was reviewed; null where none |
| review_note | the correction's note (for a stale one: why it was not applied) |
| corrected | the review changed the row: a new label, or ``excluded_by_review`` |
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from runtime.listing import from_display

MANIFEST = "manifest.parquet"  # the files a manifest run writes into its output folder
STATS = "stats.json"


class Status(StrEnum):
    OK = "ok"  # a readable image with a known class: used
    UNREADABLE = "unreadable"  # the file could not be read (permissions, I/O error)
    NOT_IMAGE = "not_image"  # not an image (another kind of file, or empty)
    CORRUPT = "corrupt"  # an image file that does not decode
    BAD_NAME = "bad_name"  # its name is not valid UTF-8: cannot be named in the manifest
    DUPLICATE = "duplicate"  # byte-identical to the kept copy (duplicate_of)
    LABEL_CONFLICT = "label_conflict"  # the same bytes under two classes: no label can be trusted
    LEAK = "leak"  # a training image whose near-duplicate group holds a test image
    UNKNOWN_LABEL = "unknown_label"  # a test image whose name carries no training class
    EXCLUDED_BY_REVIEW = "excluded_by_review"  # a person excluded it (``--corrections``, action exclude)


class Review(StrEnum):
    """What a correction did to a row (the ``review`` column): the three actions a corrections
    file may name, and ``stale`` for one left unapplied because the file changed since."""

    RELABEL = "relabel"  # filed under another class (``label``; ``original_label`` keeps the old one)
    EXCLUDE = "exclude"  # not used: status ``excluded_by_review``
    KEEP = "keep"  # looked at, the label stands: nothing changes but the record
    STALE = "stale"  # the file's bytes differ from the reviewed ones (the hash column): not applied


ACTIONS = (Review.RELABEL, Review.EXCLUDE, Review.KEEP)  # what a corrections file may ask for


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"
    EXCLUDED = "excluded"  # every row that is not ok; its status says why


USABLE = (Status.OK,)  # the rows training, evaluation and export use
PICTURES = (Status.OK, Status.DUPLICATE, Status.LEAK)  # decoded images whose label stands: the audit's per-class view

COLUMNS = [
    "path", "label", "split", "status", "reason", "source", "hash", "size_bytes", "width", "height",
    "format", "phash", "group", "group_size", "duplicate_of", "leak", "pixel_mean", "pixel_sq_mean",
    "original_label", "review", "review_note", "corrected",
]


def on_disk(root: Path, path: str) -> Path:
    """The file a manifest row's ``path`` names under ``root``: the column shows names escaped
    (a file named with a backslash has it doubled), so it is read back, not joined as it is."""
    return root / from_display(path)
