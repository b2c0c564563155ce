"""Hostile inputs to the pipeline's commands (issue 23): manifest, audit, train, evaluate,
export and synth. Every case here crashed, hung, lost a row or exhausted memory before its fix;
the files are made here, small, from scratch: nothing depends on ../shared."""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import EASY_CLASSES, TINY, easy_dataset, invoke
from tests.test_hostile_runtime import flat_png, jpeg_with_mistyped_exif, lookalikes, tiff_with_float_offset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Three easy classes of 8 frames, 2 test images each."""
    return easy_dataset(tmp_path / "data", per_class=8, test_per_class=2)


def one_line_error(result) -> str:
    """The output of a command that must fail with exit 2 and one line, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.output.count("\n") == 1 and result.output.startswith("simpsons: error:"), result.output
    return result.output


def last_line_error(result) -> str:
    """The error line of a command that reported progress first, then failed with exit 2."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and result.output.splitlines()[-1].startswith("simpsons: error:"), result.output
    assert sum(line.startswith("simpsons: error:") for line in result.output.splitlines()) == 1, result.output
    return result.output.splitlines()[-1]


def peak_simpsons(*commands: list, env: dict | None = None, timeout: int = 120) -> tuple[list[int], int, str]:
    """Each ``simpsons ARGS`` of ``commands`` in turn, in one fresh process: their exit codes,
    the process's peak memory (VmHWM, MB) and its stderr."""
    code = ("import re, sys, json\nfrom pipeline.cli import main\ncodes = []\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        codes.append(e.code)\n"
            "print(*codes, int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024)")
    done = subprocess.run([sys.executable, "-c", code, json.dumps([[str(a) for a in c] for c in commands])], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    *codes, peak = map(int, done.stdout.split()[-len(commands) - 1:])
    return codes, peak, done.stderr


# ----- 1. one hostile file never stops a run -----

def test_files_that_break_pillow_are_rows_of_the_manifest(data: Path, tmp_path: Path):
    folder = data / "simpsons_dataset" / "agnes_skinner"
    tiff_with_float_offset(folder / "evil.tif")
    jpeg_with_mistyped_exif(folder / "evil_exif.jpg")
    result = invoke("manifest", data, "--out", tmp_path / "out", "--no-plots")
    assert result.exit_code == 0, (result.output, result.exception)
    df = pl.read_parquet(tmp_path / "out" / "manifest.parquet")
    rows = {Path(p).name: r for p, r in zip(df["path"], df.iter_rows(named=True))}
    assert rows["evil.tif"]["status"] == "corrupt" and rows["evil.tif"]["reason"].startswith("cannot decode:")
    assert rows["evil_exif.jpg"]["status"] == "ok"
    assert (rows["evil_exif.jpg"]["width"], rows["evil_exif.jpg"]["height"]) == (30, 40)  # turned by its orientation
    assert "Traceback" not in result.output


# ----- 2. memory bound independent of the input -----

@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from Linux's /proc")
def test_pixel_bombs_and_a_huge_text_file_stay_within_bounded_memory(data: Path, tmp_path: Path):
    """A 13000x13000 16-bit PNG (357 KB; the manifest took 4.41 GB, the audit 4.39 GB) is a
    corrupt row with a reason in both; a 1 GB notes.txt (sparse: free to make) is hashed in
    chunks, never held whole."""
    folder = data / "simpsons_dataset" / "agnes_skinner"
    flat_png(folder / "deep.png", 13000, 13000, "I;16")
    with open(folder / "notes.txt", "wb") as f:
        f.truncate(1 << 30)
    out = tmp_path / "out"
    codes, peak, err = peak_simpsons(["manifest", data, "--out", out, "--no-plots"], ["audit", out])
    assert codes == [0, 0] and peak < 600, (codes, peak, err[-800:])
    df = pl.read_parquet(out / "manifest.parquet")
    status = dict(zip(df["path"].str.split("/").list.last(), zip(df["status"], df["reason"])))
    assert status["deep.png"] == ("corrupt", "too large: 13000x13000 pixels (169 MP) is above the 32 MP limit of one picture")
    assert status["notes.txt"] == ("not_image", "not an image file extension (.txt)")
    assert "Traceback" not in err and "DecompressionBomb" not in err


# ----- 8. validation that ended in tracebacks -----

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A manifest and a one-epoch tiny model trained on it."""
    base = tmp_path_factory.mktemp("trained")
    data = easy_dataset(base / "data", per_class=8, test_per_class=2)
    for step in [("manifest", data, "--out", base / "m", "--no-plots"),
                 ("train", "--manifest", base / "m" / "manifest.parquet", "--out", base / "run", *TINY, "--epochs", "1")]:
        result = invoke(*step)
        assert result.exit_code == 0, (step[0], result.output, result.exception)
    return {"data": data, "manifest": base / "m" / "manifest.parquet", "run": base / "run"}


def without_mean(folder: Path) -> None:
    stats = json.loads((folder / "stats.json").read_text())
    del stats["mean"]
    (folder / "stats.json").write_text(json.dumps(stats))


def edited(column: str, value: str | None) -> Callable[[Path], None]:
    """Set ``column`` of the manifest's first three rows to ``value``."""
    def edit(folder: Path) -> None:
        df = pl.read_parquet(folder / "manifest.parquet")
        first = pl.int_range(pl.len()) < 3
        df.with_columns(pl.when(first).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)).write_parquet(folder / "manifest.parquet")
    return edit


@pytest.mark.parametrize("damage, message", [(without_mean, "lacks its per-channel mean"), (edited("path", None), "without a path"),
                                             (edited("label", "zzz"), "label outside its classes")])
def test_a_damaged_manifest_is_one_line_in_every_command(trained: dict, tmp_path: Path, damage, message: str):
    folder = tmp_path / "m"
    shutil.copytree(trained["manifest"].parent, folder)
    damage(folder)
    manifest = folder / "manifest.parquet"
    for args in [("train", "--manifest", manifest, "--out", tmp_path / "run", *TINY, "--epochs", "1"),
                 ("evaluate", "--checkpoint", trained["run"] / "best.pt", "--manifest", manifest, "--out", tmp_path / "ev", "--workers", "0"),
                 ("audit", folder)]:
        assert message in one_line_error(invoke(*args)), args[0]


class Payload:
    """A pickle that would run a command when loaded by an unsafe loader."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("content, message", [("code", "holding more than tensors"), ("list", "holds a list"),
                                              ("empty", "the file is empty or cut short")])
def test_a_bad_weights_or_checkpoint_file_is_one_line(trained: dict, tmp_path: Path, content: str, message: str):
    """An empty file was "interrupted" (exit 130: click takes an EOFError for Ctrl-C) or an
    IndexError; a pickle with code or a list, tracebacks. No code ever runs."""
    import torch

    bad = tmp_path / "bad.pt"
    if content == "code":
        bad.write_bytes(pickle.dumps(Payload(tmp_path / "ran")))
    elif content == "list":
        torch.save([1, 2, 3], bad)
    else:
        bad.write_bytes(b"")
    weights = list(TINY)
    weights[weights.index("--weights") + 1] = bad
    assert message in one_line_error(invoke("train", "--manifest", trained["manifest"], "--out", tmp_path / "run", *weights))
    assert message in one_line_error(invoke("evaluate", "--checkpoint", bad, "--manifest", trained["manifest"], "--out", tmp_path / "ev"))
    assert not (tmp_path / "ran").exists()


REFUSED_BEFORE_TORCH = """
import atexit, sys
atexit.register(lambda: print("torch imported:", "torch" in sys.modules))
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_an_empty_or_missing_checkpoint_or_weights_file_is_refused_before_torch_is_imported(trained: dict, tmp_path: Path):
    """Said in a second and 80 MB, not after importing torch (700 MB): the one-line message
    that torch's own failure would give."""
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    weights = list(TINY)
    weights[weights.index("--weights") + 1] = empty
    for args, message in [
        (["evaluate", "--checkpoint", empty, "--manifest", trained["manifest"], "--out", tmp_path / "ev"], "the file is empty or cut short"),
        (["export", "--checkpoint", tmp_path / "missing.pt", "--out", tmp_path / "m.onnx"], "checkpoint not found"),
        (["train", "--manifest", trained["manifest"], "--out", tmp_path / "run", *weights], "the file is empty or cut short"),
        (["evaluate", "--checkpoint", tmp_path, "--manifest", trained["manifest"], "--out", tmp_path / "ev"], "is a folder"),
    ]:
        done = subprocess.run([sys.executable, "-c", REFUSED_BEFORE_TORCH, *map(str, args)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, (args[0], done.stderr[-500:])
        assert done.stdout == "torch imported: False\n", args[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "ev").exists()


def test_nan_is_refused_where_a_number_is_expected(trained: dict, tmp_path: Path):
    assert "not a finite number" in one_line_error(invoke("manifest", trained["data"], "--out", tmp_path / "m", "--val-fraction", "nan"))
    assert "not a finite number" in one_line_error(invoke("export", "--checkpoint", trained["run"] / "best.pt", "--out",
                                                          tmp_path / "model.onnx", "--accept-known", "nan"))
    assert not (tmp_path / "m").exists() and not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("size", ["0x0", "-5x10", "60000x60000", "12x"])
def test_synth_sizes_out_of_range_are_one_line(tmp_path: Path, size: str):
    one_line_error(invoke("synth", tmp_path / "s", "--classes", "2", "--per-class", "1", "--size", size))
    assert not (tmp_path / "s").exists()


# ----- 7. --resume writes where it is told -----

def test_resuming_a_copy_of_a_run_leaves_the_original_alone(trained: dict, tmp_path: Path):
    """The copy's config.json names the original folder as ``out``: resuming the copy rewrote
    the original's best.pt."""
    original = tmp_path / "original"
    shutil.copytree(trained["run"], original)
    config = json.loads((original / "config.json").read_text())
    (original / "config.json").write_text(json.dumps({**config, "out": str(original)}))
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in original.iterdir() if p.is_file()}
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "epochs": 2}))  # one more epoch to run
    result = invoke("train", "--resume", copy)
    assert result.exit_code == 0, (result.output, result.exception)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in original.iterdir() if p.is_file()} == before
    assert json.loads((copy / "config.json").read_text())["out"] == str(copy)
    assert (copy / "best.pt").stat().st_mtime_ns > before["best.pt"][1]


# ----- 1. an unreadable image in training or in evaluate --unknown -----

@pytest.mark.parametrize("workers", ["0", "1"])
def test_an_image_broken_after_the_manifest_stops_training_with_its_name(data: Path, tmp_path: Path, workers: str):
    """It was "Caught ImageError in DataLoader worker process 0", no file named."""
    assert invoke("manifest", data, "--out", tmp_path / "m", "--no-plots").exit_code == 0
    df = pl.read_parquet(tmp_path / "m" / "manifest.parquet").filter(pl.col("split") == "train")
    broken = df["path"][0]
    (data / broken).write_bytes(b"overwritten after the manifest")
    options = list(TINY)
    options[options.index("--workers") + 1] = workers
    error = last_line_error(invoke("train", "--manifest", tmp_path / "m" / "manifest.parquet", "--out", tmp_path / "run", *options,
                                  "--epochs", "1"))
    assert broken in error and "simpsons manifest" in error


def test_evaluate_skips_an_unreadable_unknown_image_with_a_warning(trained: dict, tmp_path: Path):
    unknown = easy_dataset(tmp_path / "strangers", per_class=0, test_per_class=1) / "kaggle_simpson_testset"
    tiff_with_float_offset(unknown / "evil.tif")
    result = invoke("evaluate", "--checkpoint", trained["run"] / "best.pt", "--manifest", trained["manifest"], "--out", tmp_path / "ev",
                    "--workers", "0", "--unknown", unknown)
    assert result.exit_code == 0, (result.output, result.exception)
    assert [line for line in result.stderr.splitlines() if "warning" in line and "evil.tif" in line and "skipped" in line]
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["unknown"]["scores"][report["unknown"]["shipped"]]["unknown_images"] == 3


# ----- 5. a full disk -----

def full_disk_write_text(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_training_on_a_full_disk_is_one_line_naming_the_file(trained: dict, tmp_path: Path, monkeypatch):
    real = Path.write_text
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: (full_disk_write_text if ".history.json" in self.name else real)(self, *a, **k))
    error = last_line_error(invoke("train", "--manifest", trained["manifest"], "--out", tmp_path / "run", *TINY, "--epochs", "1"))
    assert error == f"simpsons: error: {tmp_path / 'run' / 'history.json'}: No space left on device"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a file size limit (RLIMIT_FSIZE) plays the full disk")
def test_a_checkpoint_cut_short_by_a_full_disk_is_one_line_naming_it(trained: dict, tmp_path: Path):
    """torch's zip writer turns the failed write into a RuntimeError ("enforce fail at
    inline_container.cc: unexpected pos"): a traceback, given a file name or a file object."""
    import resource

    def limited() -> None:  # no file past 1 MB; best.pt is 45 MB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--manifest", trained["manifest"], "--out", tmp_path / "run",
                           *TINY, "--epochs", "1"], cwd=REPO, capture_output=True, text=True, preexec_fn=limited, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert done.stderr.splitlines()[-1] == f"simpsons: error: {tmp_path / 'run' / 'best.pt'}: File too large"
    assert not list((tmp_path / "run").glob(".*.tmp"))


# ----- 3. counts without bounds -----

def test_manifest_workers_are_capped_at_the_usable_cores_with_a_warning(data: Path, tmp_path: Path, monkeypatch):
    """--workers 24 on 2 cores started 25 processes (1.6 GB)."""
    from pipeline.engine import manifest as engine
    from runtime import parallel

    used = []
    real = engine.fingerprint
    monkeypatch.setattr(parallel, "usable_cores", lambda: 2)
    monkeypatch.setattr(engine, "fingerprint", lambda files, root, cached, save, workers, *a, **k: used.append(workers)
                        or real(files, root, cached, save, workers, *a, **k))
    result = invoke("manifest", data, "--out", tmp_path / "m", "--no-plots", "--workers", "24")
    assert result.exit_code == 0 and used == [2], (result.output, used)
    assert [line for line in result.stderr.splitlines() if "--workers 24: capped at 2" in line]


# ----- 6. listing -----

@pytest.mark.timeout(120)
def test_the_scan_walks_deep_looped_and_odd_folders_and_says_what_it_skips(data: Path, tmp_path: Path, monkeypatch):
    """1,100 nested folders were a RecursionError; links, FIFOs and unreadable folders were
    passed over without a word."""
    folder = data / "simpsons_dataset" / "agnes_skinner"
    (folder / "self").symlink_to(".")
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(folder / "pipe.jpg")
    deep = bottom = folder / "d"
    deep.mkdir()
    for _ in range(1099):  # mkdir(parents=True) itself recurses
        bottom = bottom / "d"
        bottom.mkdir()
    (bottom / "notes.txt").write_text("at the bottom")
    try:
        result = invoke("manifest", data, "--out", tmp_path / "m", "--no-plots")
        assert result.exit_code == 0, (result.output, result.exception)
        paths = pl.read_parquet(tmp_path / "m" / "manifest.parquet")["path"].to_list()
        assert len(paths) == len(set(paths)) == 3 * 10 + 1  # each file once, the deep one too
        assert sum(p.endswith("/d/notes.txt") for p in paths) == 1
        for name, what in [("self", "already listed"), ("gone.jpg", "broken symbolic link"), ("pipe.jpg", "not a regular file")]:
            assert [line for line in result.stderr.splitlines() if "warning" in line and name in line and what in line], name
    finally:  # pytest's own clean-up recurses, and would fail on this tree
        (bottom / "notes.txt").unlink()
        monkeypatch.chdir(bottom)
        for _ in range(1100):
            os.chdir("..")
            os.rmdir("d")


# ----- 9. smaller -----

def test_normalisation_statistics_do_not_depend_on_the_row_order():
    """stats.json's mean and std differed in the last digits between identical runs: a parallel
    sum adds the rows in whatever order they come."""
    from pipeline.engine.stats import channel_stats

    rng = np.random.default_rng(0)
    moments = rng.random((20_000, 6)) ** 3  # values of very different sizes: a sum's order shows in its last digits
    table = pl.DataFrame({"split": ["train"] * len(moments), "pixel_mean": moments[:, :3].tolist(),
                          "pixel_sq_mean": moments[:, 3:].tolist()})
    results = {repr(channel_stats(table.sample(fraction=1.0, shuffle=True, seed=seed).lazy())) for seed in range(6)}
    assert len(results) == 1, results


def warned(result, *words: str) -> list[str]:
    """The warning lines of a command's stderr that hold every one of ``words``."""
    return [line for line in result.stderr.splitlines() if "warning" in line and all(w in line for w in words)]


@pytest.mark.parametrize("inside", ["simpsons_dataset/out", "simpsons_dataset/agnes_skinner/out"])
def test_a_manifests_output_inside_the_data_is_never_data(data: Path, tmp_path: Path, inside: str):
    """`--out` inside the data root: the next run learnt a class "out" from the charts, or took
    them for pictures of the class holding them."""
    out = data / inside
    for run, (where, why) in enumerate([(out, "the output folder (--out)"), (out, "the output folder (--out)"),
                                        (tmp_path / "elsewhere", "holds an earlier manifest's output")]):
        result = invoke("manifest", data, "--out", where)
        assert result.exit_code == 0, (result.output, result.exception)
        df = pl.read_parquet(where / "manifest.parquet")
        assert json.loads((where / "stats.json").read_text())["classes"] == list(EASY_CLASSES)
        assert not df.filter(pl.col("path").str.contains("/out/")).height and df["label"].is_in(EASY_CLASSES).all()
        assert len(warned(result, str(out), why)) == (run > 0), result.stderr


@pytest.mark.skipif(os.sep == "\\", reason="on Windows a backslash separates folders and is shown as it is")
def test_two_names_once_shown_alike_are_two_rows_of_the_manifest(data: Path, tmp_path: Path):
    """A file literally named ``lit_\\xff.jpg`` and one with the byte ff were shown alike, and the
    manifest kept one row of the two."""
    from pipeline.training.datasets import ManifestDataset

    literal, raw = lookalikes(data / "simpsons_dataset" / "agnes_skinner")
    result = invoke("manifest", data, "--out", tmp_path / "m", "--no-plots")
    assert result.exit_code == 0, (result.output, result.exception)
    df = pl.read_parquet(tmp_path / "m" / "manifest.parquet").filter(pl.col("path").str.contains("/lit_"))
    assert df["path"].to_list() == ["simpsons_dataset/agnes_skinner/lit_\\\\xff.jpg", "simpsons_dataset/agnes_skinner/lit_\\xff.jpg"]
    read, bad = df.to_dicts()
    assert (read["status"], read["width"], read["size_bytes"]) == ("ok", 40, literal.stat().st_size)  # the literal file, read
    assert ManifestDataset(df.head(1), data, list(EASY_CLASSES), lambda path, *_: path)[0][0] == str(literal)  # what training opens
    assert (bad["status"], bad["size_bytes"]) == ("bad_name", raw.stat().st_size)


@pytest.mark.parametrize("missing", ["manifest.parquet", "stats.json"])
def test_a_missing_manifest_file_is_named_never_none(trained: dict, tmp_path: Path, missing: str):
    """Polars' error for a missing file may carry no file name: the message was "None: not found"."""
    folder = tmp_path / "m"
    shutil.copytree(trained["manifest"].parent, folder)
    (folder / missing).unlink()
    error = one_line_error(invoke("audit", folder))
    assert f"{folder / missing}: not found" in error and "None" not in error


def test_evaluation_and_audit_csv_cells_are_never_formulas(tmp_path: Path):
    from pipeline.audit.page import write_issues
    from pipeline.training.evaluate import write_predictions_csv

    evil = "=cmd|' -C calc'!A0.jpg"
    write_predictions_csv(tmp_path / "p.csv", [evil], ["+a"], np.array([[0.9, 0.1]]), np.array([0.5]), ["@b", "-c"])
    issues = pl.DataFrame({"path": [evil], "split": ["val"], "label": ["+a"], "suggested": ["@b"], "suggested_probability": [0.9],
                           "label_quality": [0.1], "hash": ["0123abcd"]})
    write_issues(tmp_path / "i.csv", issues)
    for name in ("p.csv", "i.csv"):
        with open(tmp_path / name, newline="", encoding="utf-8") as f:
            cells = [cell for row in csv.reader(f) for cell in row]
        assert "'" + evil in cells and "'+a" in cells and "'@b" in cells
        assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")], cells


# ----- 4. kills -----

def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``, from /proc (psutil may not be installed)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running: a zombie (ended, not yet reaped by whoever adopted it)
    holds no memory and no file, and does not count."""
    def state(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone
            return "X"
    return {p for p in pids if state(p) not in ("Z", "X")}


def survivors(pids: set[int], within: float) -> set[int]:
    """Those of ``pids`` still running after ``within`` seconds; killed, so that a failing test
    leaves nothing behind."""
    deadline = time.monotonic() + within
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = running(pids)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from Linux's /proc")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.timeout(120)
def test_a_killed_manifest_leaves_no_process_behind(tmp_path: Path, signum: int):
    """kill -9 or SIGTERM of a manifest using worker processes left the forkserver, the workers
    and the resource tracker (~200 MB) alive for more than a minute; until the killed command
    was reaped, at first."""
    from PIL import Image

    from pipeline.engine.fingerprint import PROCESS_MIN_FILES

    for i in range(PROCESS_MIN_FILES + 200):
        folder = tmp_path / "data" / "simpsons_dataset" / ("agnes_skinner", "apu_nahasapeemapetilon")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 16), (i % 256, i // 256, 90)).save(folder / f"{i:05d}.png")
    log = (tmp_path / "stderr.txt").open("w")  # not a pipe: processes left behind would hold it open
    run = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "manifest", tmp_path / "data", "--out", tmp_path / "m", "--workers", "2",
                            "--no-plots"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
                           env={**os.environ, "PYTHONPATH": str(REPO), "SIMPSONS_CACHE": str(tmp_path / "cache")})
    children = set()
    for _ in range(1500):  # until the workers are at work: their first results are in the cache
        children |= descendants(run.pid)
        if next((tmp_path / "cache").rglob("*.parquet"), None) or run.poll() is not None:
            break
        time.sleep(0.02)
    children |= descendants(run.pid)
    assert run.poll() is None and len(children) >= 3, "the run ended before its worker processes could be seen"
    run.send_signal(signum)
    # before the command is reaped: a parent waiting on a pipe that the workers hold open
    # never reaps it, and its workers took the zombie for a live command
    assert not survivors(children, within=10), "processes left behind"
    run.wait(timeout=60)
    err = (tmp_path / "stderr.txt").read_text()
    if signum == signal.SIGTERM:
        assert run.returncode == 130 and "Traceback" not in err, (run.returncode, err[-500:])


def test_a_forked_child_does_not_hold_its_parents_lock(tmp_path: Path):
    """A forked child shares its parent's flock: orphaned data-loader workers kept a killed
    training's run folder locked."""
    import multiprocessing

    from runtime.files import BusyError, Lock

    lock = Lock(tmp_path / "last.pt")
    fork = multiprocessing.get_context("fork")
    started = fork.Event()
    child = fork.Process(target=lambda: started.set() or time.sleep(60))  # forked: the target is not pickled
    child.start()
    try:
        assert started.wait(30)
        with pytest.raises(BusyError):
            Lock(tmp_path / "last.pt")  # still the parent's
        lock.release()
        Lock(tmp_path / "last.pt").release()  # the child, alive, holds nothing
    finally:
        child.kill()
        child.join()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from Linux's /proc")
@pytest.mark.timeout(180)
def test_a_training_killed_mid_epoch_leaves_no_worker_and_can_resume_at_once(trained: dict, tmp_path: Path):
    """After kill -9 of `simpsons train`, its orphaned data-loader workers lived on for up to
    5 s, holding the run folder's lock: `--resume` was refused as "being written by another run"."""
    from runtime.files import Lock

    run_dir = tmp_path / "run"
    options = list(TINY)
    options[options.index("--workers") + 1] = "2"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "train", "--manifest", trained["manifest"], "--out", run_dir, *options,
                            "--epochs", "100"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    workers = set()
    while not (run_dir / "last.pt").is_file() and run.poll() is None:  # epoch 1 done: the workers are at epoch 2's images
        workers |= descendants(run.pid)
        time.sleep(0.05)
    workers |= descendants(run.pid)
    assert run.poll() is None and len(workers) >= 2, "the training ended before its workers could be seen"
    run.kill()
    run.wait()
    Lock(run_dir / "last.pt").release()  # free at once, though the workers may take a moment to die
    assert not survivors(workers, within=1), "data-loader workers outlived the killed training"  # torch's own check: every 5 s
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "epochs": 2}))  # one epoch left
    resumed = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--resume", run_dir], cwd=REPO, capture_output=True,
                             text=True, env=env, timeout=150)
    assert resumed.returncode == 0, resumed.stderr[-800:]


POOL_INTERRUPTED_AT_ITS_SECOND_WORKER = """
import os, signal, sys, time
from pathlib import Path


def wait_for(path):
    while not Path(path).exists():
        time.sleep(0.02)


def busy(folder):  # the first worker: busy until the second has done its task, and a little longer
    Path(folder, "started").touch()
    wait_for(Path(folder, "done"))
    time.sleep(0.5)


def main(folder):
    import multiprocessing.forkserver as forkserver
    from pipeline.cli import terminate_is_interrupt
    from pipeline.engine.fingerprint import PROCESS_MIN_FILES, executor

    real, calls = forkserver.read_signed, []

    def read_signed(fd):  # a worker was forked: the pool waits for its pid, then records it
        calls.append(fd)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # its handler runs in here, unless held back
        return real(fd)

    forkserver.read_signed = read_signed
    pool = executor(PROCESS_MIN_FILES, 2)
    try:
        with terminate_is_interrupt():
            pool.submit(busy, folder)
            wait_for(Path(folder, "started"))
            pool.submit(Path(folder, "done").touch)  # starts the second worker, which takes this task
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    pool.shutdown()
    print("shut down", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
"""


def session(sid: int) -> set[int]:
    """The live processes of session ``sid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:
                found.add(int(stat.parent.name))
        except OSError:  # ended meanwhile
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from Linux's /proc")
@pytest.mark.timeout(120)
def test_sigterm_while_the_pool_starts_a_worker_still_shuts_it_down(tmp_path: Path):
    """SIGTERM in a manifest's first instants, as its pool forked a worker but had not recorded
    it: shutting down sent one stop too few, the unrecorded worker took it, and the command
    waited forever for the busy one, with the forkserver and the resource tracker. (Found by
    killing manifests of 4,200 files at random instants; here the instant is chosen.)"""
    script, out = tmp_path / "pool.py", tmp_path / "stdout.txt"
    script.write_text(POOL_INTERRUPTED_AT_ITS_SECOND_WORKER)
    with out.open("w") as f:
        run = subprocess.Popen([sys.executable, script, tmp_path], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        run.wait(timeout=30)  # 2 s here
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert out.read_text().splitlines()[-2:] == ["interrupted", "shut down"], out.read_text()[-800:]
    assert not survivors(session(run.pid), within=10), "processes left behind"
