"""Corrections as data (`simpsons manifest --corrections`): each rule on generated images, and
the step itself on a hand-made table with no files."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline import synth
from pipeline.cli import main
from pipeline.engine import corrections as review
from pipeline.engine import manifest as engine

ABE = "simpsons_dataset/abraham_grampa_simpson"
CONFLICT_A = "simpsons_dataset/agnes_skinner/pic_0003.jpg"  # copied, byte for byte, into barney_gumble
CONFLICT_B = "simpsons_dataset/barney_gumble/copied_from_agnes.jpg"
NEAR = "simpsons_dataset/barney_gumble/reencoded_from_agnes.jpg"  # agnes' pic_0005 re-encoded: its group mixes two labels
KEPT, COPY = f"{ABE}/pic_0000.jpg", f"{ABE}/pic_0012.jpg"  # synth plants an exact copy
HEADER = "path,action,label,note,hash\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corrections") / "data"
    synth.write_dataset(root, classes=4, per_class=12, test_per_class=3, seed=3, size=(96, 72))
    shutil.copy(root / CONFLICT_A, root / CONFLICT_B)
    buffer = io.BytesIO()
    Image.open(root / "simpsons_dataset" / "agnes_skinner" / "pic_0005.jpg").save(buffer, format="JPEG", quality=60)
    (root / NEAR).write_bytes(buffer.getvalue())
    (root / "simpsons_dataset" / "ralph_wiggum").mkdir()
    (root / "simpsons_dataset" / "ralph_wiggum" / "readme.txt").write_text("a folder, but no class: no image")
    return root


def manifest(data: Path, out: Path, corrections: str | None = None):
    """Run `simpsons manifest` (with ``corrections`` as the CSV's text); returns (result, table, stats)."""
    args = ["manifest", str(data), "--out", str(out), "--no-plots"]
    if corrections is not None:
        (out.parent / f"{out.name}.csv").write_text(corrections)
        args += ["--corrections", str(out.parent / f"{out.name}.csv")]
    result = CliRunner().invoke(main, args)
    if result.exit_code:
        return result, None, None
    m = engine.read(out / engine.MANIFEST)
    return result, m.table, m.stats


def row(df: pl.DataFrame, path: str) -> dict:
    return df.filter(pl.col("path") == path).row(0, named=True)


def test_the_step_is_pure_on_a_hand_made_table():
    df = pl.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"], "label": ["x", "x", "x", "y", "y", "y"],
                       "status": ["ok", "ok", "ok", "ok", "corrupt", "ok"], "reason": [None, None, None, None, "bad", None],
                       "hash": pl.Series([1, 2, 3, 4, 5, 6], dtype=pl.UInt64)})
    table = pl.DataFrame([(2, "a.jpg", "relabel", "y", "looks like y", "", None), (3, "b.jpg", "exclude", "", "", "2", None),
                          (4, "c.jpg", "keep", "", "fine", "", None), (5, "d.jpg", "relabel", "x", "", "ff", None),
                          (6, "e.jpg", "exclude", "", "", "", None), (7, "f.jpg", "", "", "undecided", "", None)],
                         schema=review.TABLE, orient="row")
    out = review.apply(df, review.Corrections("c.csv", table, "0"))
    assert out["path"].to_list() == df["path"].to_list()
    assert out["label"].to_list() == ["y", "x", "x", "y", "y", "y"] and out["original_label"].to_list() == df["label"].to_list()
    assert out["status"].to_list() == ["ok", "excluded_by_review", "ok", "ok", "corrupt", "ok"]  # a corrupt file stays corrupt
    assert out["reason"][1] == "excluded by review" and out["reason"][4] == "bad"
    assert out["review"].to_list() == ["relabel", "exclude", "keep", "stale", "exclude", None]  # d: hash ff, the file's is 4
    assert out["review_note"][0] == "looks like y" and "corrections line 5" in out["review_note"][3]
    assert out["corrected"].to_list() == [True, True, False, False, False, False]


def test_a_relabel_is_decided_before_duplicates_and_the_split(data: Path, tmp_path: Path):
    _, before, _ = manifest(data, tmp_path / "before")
    assert row(before, CONFLICT_A)["status"] == row(before, CONFLICT_B)["status"] == "label_conflict"
    result, df, stats = manifest(data, tmp_path / "after", HEADER + f"{CONFLICT_B},relabel,agnes_skinner,copy of agnes,\n"
                                                                      f"{NEAR},relabel,agnes_skinner,,\n")
    assert result.exit_code == 0, result.output
    copy = row(df, CONFLICT_B)
    assert (copy["label"], copy["original_label"], copy["review"], copy["corrected"]) == ("agnes_skinner", "barney_gumble", "relabel", True)
    assert (copy["status"], copy["duplicate_of"]) == ("duplicate", CONFLICT_A) and row(df, CONFLICT_A)["status"] == "ok"
    near, group = row(df, NEAR), df.filter(pl.col("group") == row(df, NEAR)["group"])
    assert near["label"] == "agnes_skinner" and group["label"].n_unique() == 1 and group["split"].n_unique() == 1
    grew = sum(stats["counts"][s]["agnes_skinner"] for s in ("train", "val"))
    assert grew == sum(before.filter(pl.col("label") == "agnes_skinner")["split"].is_in(["train", "val"])) + 2
    assert stats["corrections"] == {"relabel": 2, "exclude": 0, "keep": 0, "corrected": 2, "stale": []}


def test_an_exclusion_is_decided_before_duplicates_and_is_no_problem(data: Path, tmp_path: Path):
    result, df, stats = manifest(data, tmp_path / "out", HEADER + f"{KEPT},exclude,,watermark,\n"
                                                                    "kaggle_simpson_testset/agnes_skinner_0.jpg,exclude,,,\n")
    assert result.exit_code == 0, result.output
    gone = row(df, KEPT)
    assert (gone["status"], gone["split"], gone["reason"], gone["corrected"]) == ("excluded_by_review", "excluded",
                                                                               "excluded by review: watermark", True)
    assert row(df, COPY)["status"] == "ok"  # the other copy is kept now
    assert row(df, "kaggle_simpson_testset/agnes_skinner_0.jpg")["split"] == "excluded"
    assert stats["status"]["excluded_by_review"] == 2 and stats["corrections"]["exclude"] == 2
    assert not [p for p in stats["problems"] if p["status"] == "excluded_by_review"]  # a decision, not a bad file


def test_keep_changes_nothing_but_the_record(data: Path, tmp_path: Path):
    _, before, _ = manifest(data, tmp_path / "before")
    result, after, stats = manifest(data, tmp_path / "after", HEADER + f"{NEAR},keep,,both are agnes?,\n{KEPT},,,,\n")
    assert result.exit_code == 0, result.output
    record = ["review", "review_note"]
    assert after.drop(record).equals(before.drop(record))
    assert after.filter(pl.col("review").is_not_null())["path"].to_list() == [NEAR]  # the empty action is no decision
    assert stats["corrections"]["keep"] == 1 and stats["corrections"]["corrected"] == 0


def test_a_file_changed_since_its_review_is_reported_not_corrected(data: Path, tmp_path: Path):
    _, before, _ = manifest(data, tmp_path / "before")
    actual = row(before, KEPT)["hash"]
    result, df, stats = manifest(data, tmp_path / "out", HEADER + f"{KEPT},exclude,,,{actual}\n"
                                                                    f"{NEAR},relabel,agnes_skinner,,0123456789abcdef\n")
    assert result.exit_code == 0, result.output
    assert row(df, KEPT)["status"] == "excluded_by_review"  # the hash matches: applied
    stale = row(df, NEAR)
    assert (stale["label"], stale["review"], stale["corrected"]) == ("barney_gumble", "stale", False)
    assert f"{NEAR}: not applied: the file changed since it was reviewed (corrections line 3)" in result.output
    assert [s["path"] for s in stats["corrections"]["stale"]] == [NEAR]


def test_the_corrections_enter_the_manifest_hash_so_resume_notices(data: Path, tmp_path: Path):
    from pipeline.training.train import TrainError, file_hash, resume_state

    out = tmp_path / "out"
    _, _, stats = manifest(data, out, HEADER + f"{NEAR},keep,,,\n")
    first = file_hash(out / engine.MANIFEST)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"manifest_hash": first}))
    _, _, again = manifest(data, out, HEADER + f"{NEAR},keep,,,\n{KEPT},,,a line with no decision,\n")  # the same decisions
    assert file_hash(out / engine.MANIFEST) != first and again["config"]["corrections_hash"] != stats["config"]["corrections_hash"]
    with pytest.raises(TrainError, match="has changed since this run started"):
        resume_state(run, out / engine.MANIFEST)
    manifest(data, out)
    assert "corrections_hash" not in pl.read_parquet_metadata(out / engine.MANIFEST)  # without a review, as before


def test_bad_corrections_are_one_error_naming_every_bad_line_and_nothing_is_written(data: Path, tmp_path: Path):
    out = tmp_path / "out"
    manifest(data, out)
    written = (out / engine.MANIFEST).read_bytes(), (out / engine.STATS).read_bytes()
    lines = [f"{ABE}/pic_0001.jpg,relabel,agnes_skiner,,",  # 2: no such class
             f"{ABE}/pic_0001.jpg,exclude,,,",  # 3: listed twice, another decision
             f"{ABE}/pic_0002.jpg,exclude,,,",
             f"{ABE}/pic_0002.jpg,exclude,,again,",  # 5: twice, the same decision: fine
             "simpsons_dataset/no_such/file.jpg,exclude,,,",  # 6: not in the data
             f"{data}/{ABE}/pic_0003.jpg,exclude,,,",  # 7: absolute, not as the manifest stores it
             f"{ABE}/pic_0004.jpg,move,,,",  # 8: no such action
             f"{ABE}/pic_0005.jpg,relabel,,,",  # 9: relabel without a label
             f"{ABE}/pic_0006.jpg,relabel,ralph_wiggum,,",  # 10: a folder without an image is no class
             f"{ABE}/pic_0007.jpg,exclude,,a, b,",  # 11: an unquoted comma
             f"{ABE}/pic_0008.jpg,exclude,,,xyz",  # 12: not a hash
             ",exclude,,,"]  # 13: no path
    result, _, _ = manifest(data, out, HEADER + "\n".join(lines) + "\n")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    named = [int(part.split(":")[0]) for part in result.output.split("line ")[1:] if part.split(":")[0].isdigit()]
    assert named == [2, 3, 6, 7, 8, 9, 10, 11, 12, 13]
    assert "did you mean 'agnes_skinner'" in result.output and "10 bad line(s)" in result.output
    assert ((out / engine.MANIFEST).read_bytes(), (out / engine.STATS).read_bytes()) == written
    fresh = tmp_path / "fresh"
    assert manifest(data, fresh, HEADER + lines[0] + "\n")[0].exit_code == 2 and not (fresh / engine.MANIFEST).exists()


@pytest.mark.parametrize("content, says", [
    (b"\xff\xfe\x00p\x00a", "not a UTF-8 CSV file"),
    (b"", "must name the columns"),
    (b"file,decision\na.jpg,exclude\n", "lacks path, action"),
])
def test_a_file_that_is_not_corrections_is_one_line(data: Path, tmp_path: Path, content: bytes, says: str):
    (tmp_path / "c.csv").write_bytes(content)
    result = CliRunner().invoke(main, ["manifest", str(data), "--out", str(tmp_path / "out"), "--corrections", str(tmp_path / "c.csv")])
    assert result.exit_code == 2 and says in result.output and "c.csv" in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_spreadsheet_file_reads_as_written(tmp_path: Path):
    """A byte-order mark, capitalised headers, quoted cells over two lines, a cell protected
    from formulas and blank lines all read as the file means them."""
    path = tmp_path / "c.csv"
    path.write_bytes("\ufeffPath,Action,Label,Note\r\na.jpg, Relabel ,x,\"two\r\nlines\"\r\n\r\n'=b.jpg,exclude,,\r\n".encode())
    table = review.read(path).table
    assert table.select("line", "path", "action", "label", "note").rows() == [(3, "a.jpg", "relabel", "x", "two\r\nlines"),
                                                                            (5, "=b.jpg", "exclude", "", "")]
