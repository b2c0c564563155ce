"""What a hostile folder, a killed run and a wrong setup must not break: each case here made a
command crash, lose work or exhaust memory before it was fixed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.engine import manifest as engine
from pipeline.cli import main as simpsons
from runtime.cli import main as infer
from runtime.files import Lock
from tests import tiny_models as tiny
from tests.conftest import easy_dataset

BAD_NAME = os.fsdecode(b"bart_simpson_9\xff.jpg")  # not valid UTF-8: Python holds it with a surrogate


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Colour pictures the tiny model knows, one of them under a name that is not UTF-8."""
    images = easy_dataset(tmp_path / "easy", per_class=1, test_per_class=3) / "kaggle_simpson_testset"
    Image.new("RGB", (40, 30), (200, 40, 40)).save(images / BAD_NAME, format="JPEG")
    return images


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return tiny.plain(tmp_path / "model.onnx", ood_threshold=-1.0)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from Linux's /proc")
def test_very_thin_images_stay_within_bounded_memory(tmp_path: Path, model: Path):
    """A 65000x1 PNG would resize to 256 x 16.6 million pixels; now at most the crop is."""
    thin = tmp_path / "thin"
    thin.mkdir()
    Image.new("RGB", (65000, 1), (200, 40, 40)).save(thin / "wide.png")
    Image.new("RGB", (1, 65000), (40, 160, 70)).save(thin / "tall.png")
    Image.new("RGB", (30000, 2), (30, 90, 200)).save(thin / "strip.png")
    portable = tmp_path / "model.portable.onnx"
    from export.onnx_export import write_metadata
    from export.portable import make_portable

    make_portable(model, portable, tiny.PRE, 1.0)
    write_metadata(portable, tiny.info(variant="portable"))
    for path in (model, portable):
        # VmHWM, not ru_maxrss: the latter keeps the forking test process's size across exec
        code = (f"import re; from runtime.cli import main; rc = main([{str(thin)!r}, '--model', {str(path)!r}, '-q', "
                f"'-o', {str(tmp_path / 'rows.csv')!r}, '--threads', '2']); "
                "print(rc, int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        rc, peak_mb = map(int, done.stdout.split())
        assert rc == 0 and peak_mb < 500, (path.name, rc, peak_mb, done.stderr[-500:])
        rows = (tmp_path / "rows.csv").read_text().splitlines()
        assert len(rows) == 4 and all(",ok," in row for row in rows[1:])


def test_a_name_that_is_not_utf8_is_escaped_and_the_run_goes_on(folder: Path, model: Path, tmp_path: Path, capsys):
    for suffix in (".csv", ".parquet", ".jsonl", ".json"):
        out = tmp_path / f"rows{suffix}"
        assert infer([str(folder), "--model", str(model), "-o", str(out)]) == 0
        if suffix == ".parquet":
            rows = pl.read_parquet(out).to_dicts()
        elif suffix == ".csv":
            rows = pl.read_csv(out).to_dicts()
        else:
            rows = json.loads(out.read_text()) if suffix == ".json" else [json.loads(x) for x in out.read_text().splitlines()]
        escaped = [r for r in rows if r["path"].endswith("bart_simpson_9\\xff.jpg")]
        assert len(rows) == 10 and len(escaped) == 1 and escaped[0]["status"] == "ok"
        assert "not valid text" in capsys.readouterr().err

    data = tmp_path / "data"
    easy_dataset(data, per_class=12, test_per_class=2)
    Image.new("RGB", (40, 30), (200, 40, 40)).save(data / "simpsons_dataset" / "agnes_skinner" / os.fsdecode(b"pic_\xfe.jpg"), format="JPEG")
    result = CliRunner().invoke(simpsons, ["manifest", str(data), "--out", str(tmp_path / "out"), "--no-plots"])
    assert result.exit_code == 0, result.output
    df = engine.read(tmp_path / "out" / engine.MANIFEST).table
    row = df.filter(pl.col("path").str.ends_with("pic_\\xfe.jpg"))
    assert row["status"].item() == "bad_name" and row["split"].item() == "excluded"
    assert (df["status"] == "ok").sum() == 42


def test_a_killed_parquet_or_json_run_leaves_the_previous_file(folder: Path, model: Path, tmp_path: Path, monkeypatch, capsys):
    from runtime import classifier

    for suffix in (".parquet", ".json"):
        out = tmp_path / f"rows{suffix}"
        assert infer([str(folder), "--model", str(model), "-o", str(out), "-q"]) == 0
        before = out.read_bytes()
        real = classifier.Classifier.iter_predict

        def interrupted(self, *args, **kwargs):
            for i, result in enumerate(real(self, *args, **kwargs)):
                if i == 3:
                    raise KeyboardInterrupt
                yield result

        monkeypatch.setattr(classifier.Classifier, "iter_predict", interrupted)
        assert infer([str(folder), "--model", str(model), "-o", str(out), "-q"]) == 130
        monkeypatch.undo()
        assert out.read_bytes() == before and not list(tmp_path.glob(f".rows{suffix}.*.tmp"))
        assert "interrupted after 3 files" in capsys.readouterr().err


def test_ctrl_c_keeps_whole_csv_rows_and_resume_finishes_without_duplicates(folder: Path, model: Path, tmp_path: Path, monkeypatch):
    from runtime import classifier

    out = tmp_path / "rows.csv"
    real = classifier.Classifier.iter_predict

    def interrupted(self, *args, **kwargs):
        for i, result in enumerate(real(self, *args, **kwargs)):
            if i == 4:
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(classifier.Classifier, "iter_predict", interrupted)
    assert infer([str(folder), "--model", str(model), "-o", str(out), "-q"]) == 130
    monkeypatch.undo()
    with out.open("a") as f:
        f.write("half,a,row")  # as a kill in the middle of a write would leave
    assert infer([str(folder), "--model", str(model), "-o", str(out), "-q", "--resume"]) == 0
    rows = pl.read_csv(out)
    assert len(rows) == 10 and rows["path"].n_unique() == 10 and "half" not in out.read_text()
    assert infer([str(folder), "--model", str(model), "-o", str(out), "-q", "--resume"]) == 0  # nothing left to do
    assert len(pl.read_csv(out)) == 10


def test_a_second_writer_is_refused(folder: Path, model: Path, tmp_path: Path, capsys):
    out = tmp_path / "rows.csv"
    with Lock(out):  # another run holds it
        assert infer([str(folder), "--model", str(model), "-o", str(out)]) == 2
        assert "being written by another run" in capsys.readouterr().err
        data = easy_dataset(tmp_path / "data", per_class=4, test_per_class=1)
        with Lock(tmp_path / "out" / engine.MANIFEST):
            result = CliRunner().invoke(simpsons, ["manifest", str(data), "--out", str(tmp_path / "out")])
            assert result.exit_code == 2 and "being written by another run" in result.output


def test_write_failures_are_one_line_and_keep_whole_rows(folder: Path, model: Path, tmp_path: Path, monkeypatch, capsys):
    full = tmp_path / "full.csv"
    full.symlink_to("/dev/full")  # every write: ENOSPC
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args, message in [
        ([str(folder), "--model", str(model), "-o", str(full)], "No space left on device"),
        ([str(folder), "--model", str(model), "-o", str(blocker / "rows.json")], "cannot write"),
        ([str(folder), "--model", str(model), "--threads", "-1"], "--threads must be at least 1"),
    ]:
        assert infer(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.strip().count("\n") == 0, err

    data = easy_dataset(tmp_path / "data", per_class=4, test_per_class=1)
    assert CliRunner().invoke(simpsons, ["manifest", str(data), "--out", str(tmp_path / "out"), "--no-plots"]).exit_code == 0
    before = (tmp_path / "out" / engine.MANIFEST).read_bytes()

    def disk_full(self, *args, **kwargs):
        raise pl.exceptions.ComputeError("parquet: File out of specification: underlying IO error: No space left on device (os error 28)")

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", disk_full)
    result = CliRunner().invoke(simpsons, ["manifest", str(data), "--out", str(tmp_path / "out"), "--no-plots"])
    assert result.exit_code == 2 and result.output.strip().endswith("cannot write (No space left on device)")
    assert "simpsons: error:" in result.output and "Traceback" not in result.output
    assert (tmp_path / "out" / engine.MANIFEST).read_bytes() == before


def test_a_huge_batch_size_is_capped(folder: Path, model: Path, capsys):
    assert infer([str(folder), "--model", str(model), "--batch-size", "100000", "-q"]) == 0
    assert "--batch-size 100000 capped at 128" in capsys.readouterr().err


def test_identical_files_under_two_labels_are_a_conflict(tmp_path: Path):
    data = easy_dataset(tmp_path / "data", per_class=12, test_per_class=2)
    classes = data / "simpsons_dataset"
    (classes / "barney_gumble").symlink_to(classes / "agnes_skinner", target_is_directory=True)  # a linked class folder
    result = CliRunner().invoke(simpsons, ["manifest", str(data), "--out", str(tmp_path / "out"), "--no-plots"])
    assert result.exit_code == 0, result.output
    manifest_read = engine.read(tmp_path / "out" / engine.MANIFEST)
    df, stats = manifest_read.table, manifest_read.stats
    conflicts = df.filter(pl.col("status") == "label_conflict")
    assert set(conflicts["label"]) == {"agnes_skinner", "barney_gumble"} and len(conflicts) == 24
    assert (conflicts["split"] == "excluded").all() and conflicts["duplicate_of"].is_null().all()
    assert stats["label_conflicts"] == [["agnes_skinner", "barney_gumble", 24]]
    assert set(stats["empty_classes"]) == {"agnes_skinner", "barney_gumble"}
    lines = result.stderr.splitlines()
    assert sum("identical file" in line for line in lines) == 1  # once per pair of classes, not per file
    assert sum("has no training image left" in line for line in lines) == 2
