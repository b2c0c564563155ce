"""Every hostile case of issues #15 and #23, planted and run through the real commands, one
table: exit code, peak memory (VmHWM of the command's own process), whether a traceback was
printed, whether the earlier output survived, and what a rerun found.

    .venv/bin/python bench/bench_reliability.py [--model bench/.work/edge-resnet18-128/model.onnx] [--cases 23|pipeline]

``--cases 23`` runs only the cases of issue #23 (a few minutes; the others take longer);
``--cases pipeline`` only its pipeline cases, which make their own data and need neither the
real sample nor a model (a minute).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import REPO, SAMPLE, WORK, files, peak_of, require_sample, with_peak

MODULES = {"simpsons": "pipeline.cli", "simpsons-infer": "runtime.cli"}


def command(tool: str, *args) -> list[str]:
    return with_peak(MODULES[tool], *args)


def run(tool: str, *args, timeout: int = 900, file_limit: int | None = None, cwd: Path = REPO) -> tuple[int, int, str]:
    """``file_limit``: no file may grow past that many bytes (RLIMIT_FSIZE, with SIGXFSZ ignored,
    so a write that crosses it is cut short and the next fails, as on a disk that fills up).
    ``cwd``: where it runs (this checkout's code is imported wherever that is)."""
    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    try:
        done = subprocess.run(command(tool, *args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=limited if file_limit else None)
    except subprocess.TimeoutExpired:
        return -1, -1, f"timed out after {timeout} s"
    peak = peak_of(done.stderr)
    return done.returncode, peak, done.stderr


def started(tool: str, *args) -> subprocess.Popen:
    """In the background; Ctrl-C works in it even when this script runs where SIGINT is
    ignored (a background job of a non-interactive shell passes that on)."""
    return subprocess.Popen(command(tool, *args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=WORK / "edge-resnet18-128" / "model.onnx")
    parser.add_argument("--cases", choices=("all", "23", "pipeline"), default="all",
                        help="every case, the cases of issue #23 alone, or its pipeline cases alone (no sample, no model)")
    args = parser.parse_args()
    args.model = args.model.resolve()  # some cases run elsewhere
    work = WORK / "reliability"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows: list[tuple[str, ...]] = []

    def row(case: str, rc: int, peak: int, stderr: str, survived: str = "", note: str = "") -> None:
        rows.append((case, str(rc), f"{peak}" if peak >= 0 else "", "yes" if "Traceback" in stderr else "no", survived, note))

    if args.cases != "pipeline":
        require_sample()
        if not args.model.is_file():
            sys.exit(f"{args.model}: no model (bench/bench_portable.py makes it, or pass --model)")
        frames = [p for p in files(SAMPLE / "simpsons_dataset") if p.suffix == ".jpg"]
        issue23(work / "issue23", args.model, frames, row)
    pipeline23(work / "pipeline", row)
    training23(work / "training", row)
    if args.cases == "all":
        issue15(work, args.model, frames, rows, row)
    print("| case | exit | peak MB | traceback | earlier output survived | what the run or rerun found |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |")


def issue15(work: Path, model: Path, frames: list[Path], rows: list[tuple[str, ...]], row: Callable[..., None]) -> None:
    from PIL import Image


    # 1. thin images
    thin = work / "thin"
    thin.mkdir()
    Image.new("RGB", (65000, 1), (200, 40, 40)).save(thin / "wide.png")
    Image.new("RGB", (1, 65000), (40, 160, 70)).save(thin / "tall.png")
    Image.new("RGB", (30000, 2), (30, 90, 200)).save(thin / "strip.png")
    for which in (model, model.with_suffix(".portable.onnx")):
        rc, peak, err = run("simpsons-infer", thin, "--model", which, "-o", work / "thin.csv", "--threads", "2", "-q")
        row(f"3 PNGs of 65000x1, 1x65000, 30000x2 ({which.name})", rc, peak, err, note="all 3 classified")

    # 2. names that are not UTF-8, in a data root and an inference folder
    data = work / "data"
    for label in ("bart_simpson", "homer_simpson"):
        (data / "simpsons_dataset" / label).mkdir(parents=True)
        for f in [p for p in frames if p.parent.name == label][:40]:
            (data / "simpsons_dataset" / label / f.name).symlink_to(f)
    shutil.copy(frames[0], data / "simpsons_dataset" / "bart_simpson" / os.fsdecode(b"frame_\xff.jpg"))
    rc, peak, err = run("simpsons", "manifest", data, "--out", work / "manifest", "--no-plots")
    row("manifest: a file name that is not UTF-8", rc, peak, err, note="row with status bad_name, name escaped")
    for suffix in (".csv", ".parquet"):
        rc, peak, err = run("simpsons-infer", data / "simpsons_dataset", "--model", model, "-o", work / f"odd{suffix}", "-q")
        row(f"infer -o {suffix}: a file name that is not UTF-8", rc, peak, err, note="81 rows, the odd name escaped")

    # 3. a killed Parquet/JSON run, then a rerun
    many = work / "many"
    many.mkdir()
    for i, f in enumerate(frames[:600]):
        (many / f"{i:04d}.jpg").symlink_to(f)
    for suffix in (".parquet", ".json"):
        out = work / f"old{suffix}"
        run("simpsons-infer", many, "--model", model, "-o", out, "-q")
        before = out.read_bytes()
        process = started("simpsons-infer", many, "--model", model, "-o", out, "-q")
        time.sleep(2.5)
        process.kill()
        process.wait()
        intact = out.read_bytes() == before
        stale = len(list(work.glob(f".old{suffix}.*.tmp")))
        rc, peak, err = run("simpsons-infer", many, "--model", model, "-o", out, "-q")
        left = len(list(work.glob(f".old{suffix}.*.tmp")))
        row(f"infer -o {suffix} killed (SIGKILL at 2.5 s), then rerun", rc, peak, err, "yes" if intact else "NO",
            f"temporaries: {stale} after the kill, {left} after the rerun")

    # 5. two writers at once
    first = started("simpsons-infer", many, "--model", model, "-o", work / "same.csv", "-q")
    time.sleep(1.5)
    rc, peak, err = run("simpsons-infer", many, "--model", model, "-o", work / "same.csv", "-q")
    first.wait()
    row("two runs writing the same .csv at once (the second)", rc, peak, err, note=err.strip().splitlines()[0][:80] if err.strip() else "")

    # 6. hostile options and places
    full = work / "full.csv"
    full.symlink_to("/dev/full")
    blocker = work / "a-file"
    blocker.write_text("")
    for case, a in [
        ("infer -o a .csv on a full disk (/dev/full)", ["-o", full]),
        ("infer -o .json under a file (unwritable folder)", ["-o", blocker / "rows.json"]),
        ("infer --threads -1", ["--threads", "-1"]),
    ]:
        rc, peak, err = run("simpsons-infer", many, "--model", model, *a)
        row(case, rc, peak, err, note=last_line(err))

    # 7. a huge batch size on 2000 and 5000 files
    for count in (2000, 5000):
        big = work / f"big{count}"
        big.mkdir()
        for i in range(count):
            (big / f"{i:05d}.jpg").symlink_to(frames[i % len(frames)])
        for batch in ("32", "100000"):
            rc, peak, err = run("simpsons-infer", big, "--model", model, "-o", work / f"big{batch}.csv", "-q", "--batch-size", batch)
            row(f"infer --batch-size {batch}, {count} files", rc, peak, err)

    # 7b. CSV: Ctrl-C, then --resume
    out = work / "rows.csv"
    process = started("simpsons-infer", work / "big5000", "--model", model, "-o", out, "-q")
    time.sleep(4.0)
    process.send_signal(signal.SIGINT)
    rc = process.wait()
    err = process.stderr.read()
    kept = len(out.read_text().splitlines()) - 1
    rc2, peak, err2 = run("simpsons-infer", work / "big5000", "--model", model, "-o", out, "-q", "--resume")
    total = len(out.read_text().splitlines()) - 1
    unique = len({line.split(",")[0] for line in out.read_text().splitlines()[1:]})
    rows.append(("infer -o .csv, 5000 files: Ctrl-C at 4 s, then --resume", f"{rc}, then {rc2}", str(peak),
                 "yes" if "Traceback" in err + err2 else "no", "yes",
                 f"{kept} whole rows kept; after --resume {total} rows ({unique} distinct paths) for 5000 files"))

    # 8. a killed manifest, then a rerun
    large = work / "large"
    for label in ("bart_simpson", "homer_simpson", "lisa_simpson"):
        (large / "simpsons_dataset" / label).mkdir(parents=True)
        for i, f in enumerate(frames[:1100]):
            shutil.copy(f, large / "simpsons_dataset" / label / f"{i:04d}.jpg")  # 3300 distinct files to fingerprint
    os.environ["SIMPSONS_CACHE"] = str(work / "cache")
    process = started("simpsons", "manifest", large, "--out", work / "manifest2", "--no-plots")
    time.sleep(2.5)
    process.kill()
    process.wait()
    cached = sum(1 for _ in (work / "cache").rglob("part-*.parquet"))
    after_kill = (work / "manifest2" / "manifest.parquet").is_file()
    rc, peak, err = run("simpsons", "manifest", large, "--out", work / "manifest2", "--no-plots")
    first = (work / "manifest2" / "manifest.parquet").read_bytes()
    shutil.rmtree(work / "cache")
    run("simpsons", "manifest", large, "--out", work / "manifest3", "--no-plots")
    same = (work / "manifest3" / "manifest.parquet").read_bytes() == first
    row("manifest of 3300 files killed (SIGKILL at 2.5 s), then rerun", rc, peak, err,
        note=f"after the kill: manifest {'present' if after_kill else 'absent'}, {cached} cache shards kept; "
             f"the rerun's manifest byte-identical to a clean run: {same}")



def rows_in(path: Path) -> int:
    """Whole rows in a CSV output (its header aside)."""
    return len(path.read_bytes().split(b"\r\n")[1:-1]) if path.is_file() else 0


def last_line(stderr: str, containing: str = "") -> str:
    """The last line of the command's own (with ``containing``), shortened for the table."""
    lines = [x for x in stderr.splitlines() if not x.startswith("PEAK_MB") and containing in x]
    return lines[-1].replace(f"{WORK}/", "")[:110] if lines else ""


def nested(root: Path, depth: int) -> Path:
    """``root/d/d/.../d``, ``depth`` folders deep; the deepest. (mkdir(parents=True) recurses.)"""
    folder = root
    for _ in range(depth):
        folder = folder / "d"
        folder.mkdir()
    return folder


def remove_nested(root: Path, deepest: Path) -> None:
    """Remove what ``nested`` made, from the bottom (shutil.rmtree recurses too)."""
    for f in deepest.iterdir():
        f.unlink()
    while deepest != root:
        deepest.rmdir()
        deepest = deepest.parent


def issue23(work: Path, model: Path, frames: list[Path], row: Callable[..., None]) -> None:
    """The runtime's cases of issue #23: hostile files, memory bombs, unbounded counts, a disk
    that fills up, hostile folders, --resume on foreign files, formula names, symbolic links."""
    import random

    import pyarrow.parquet as pq
    from PIL import Image

    from tests.test_hostile_runtime import flat_png, fuzz_folder

    portable = model.with_suffix(".portable.onnx")
    work.mkdir(parents=True)

    def folder_of(name: str, count: int) -> Path:
        folder = work / name
        folder.mkdir()
        for i, f in enumerate(frames[:count]):
            (folder / f"{i:03d}.jpg").symlink_to(f)
        return folder

    hundred = folder_of("hundred", 100)

    # 1. one hostile file among good ones
    mixed = folder_of("mixed", 100)
    for name in ("evil.tif", "evil_exif.jpg"):
        shutil.copy(REPO.parent / "shared" / "data" / "hostile" / name, mixed / name)
    for suffix in (".parquet", ".csv"):
        out = work / f"mixed{suffix}"
        rc, peak, err = run("simpsons-infer", mixed, "--model", model, "-o", out, "-q")
        kept = (rows_in(out) if suffix == ".csv" else len(pq.read_table(out))) if out.is_file() else 0
        row(f"infer -o {suffix}: evil.tif and evil_exif.jpg among 100 frames", rc, peak, err, note=f"{kept} rows of 102")

    # 2. memory bombs and frames in flight
    bombs = work / "bombs"
    bombs.mkdir()
    flat_png(bombs / "deep.png", 13000, 13000, "I;16")
    flat_png(bombs / "alpha.png", 13000, 13000, "RGBA")
    Image.new("RGB", (12000, 12000), (200, 40, 40)).save(bombs / "huge.jpg", quality=80)
    flat_png(bombs / "limit.png", 5600, 5700, "RGBA")
    for case, name, which in [("a 16-bit PNG 13000x13000", "deep.png", model), ("an RGBA PNG 13000x13000", "alpha.png", model),
                              ("a JPEG 12000x12000", "huge.jpg", portable), ("an RGBA PNG 5600x5700 (31.9 MP)", "limit.png", model)]:
        out = work / "bomb.csv"
        rc, peak, err = run("simpsons-infer", bombs / name, "--model", which, "-o", out, "-q")
        status = next(csv.reader(out.read_text().splitlines()[1:]))[1] if rows_in(out) else ""
        row(f"infer {case} ({which.name})", rc, peak, err, note=status[:90])
    Image.open(frames[0]).convert("RGB").resize((1920, 1080)).save(work / "frame.png")
    hd = work / "hd"
    hd.mkdir()
    for i in range(300):
        (hd / f"{i:03d}.png").symlink_to(work / "frame.png")
    for batch in ("32", "128"):
        rc, peak, err = run("simpsons-infer", hd, "--model", portable, "-o", work / "hd.csv", "-q", "--batch-size", batch)
        row(f"infer 300 1080p frames, portable, --batch-size {batch}", rc, peak, err, note=f"{rows_in(work / 'hd.csv')} rows")

    # 3. counts without bounds
    for option, value in (("--top-k", "1000000000"), ("--threads", "100000")):
        rc, peak, err = run("simpsons-infer", hundred, "--model", model, "-o", work / "counts.csv", option, value, "-q")
        row(f"infer {option} {value}", rc, peak, err, note=last_line(err, "capped"))

    # 5. a disk that fills up in the middle of a row
    for suffix in (".csv", ".jsonl"):
        out = work / f"full{suffix}"
        rc, peak, err = run("simpsons-infer", hundred, "--model", model, "-o", out, "-q", file_limit=5000)
        whole = out.read_bytes().endswith(b"\n")
        row(f"infer -o {suffix} where the file may not pass 5000 bytes", rc, peak, err, note=f"ends with a whole row: {whole}; {last_line(err)}")

    # 6. hostile folders
    loop = folder_of("loop", 100)
    (loop / "self").symlink_to(".")
    (loop / "gone.jpg").symlink_to(work / "nowhere.jpg")
    os.mkfifo(loop / "pipe.jpg")
    (loop / "locked").mkdir()
    shutil.copy(frames[0], loop / "locked" / "hidden.jpg")
    (loop / "locked").chmod(0)  # unreadable, except to root
    (work / "deep").mkdir()
    deepest = nested(work / "deep", 1100)
    shutil.copy(frames[0], deepest / "bottom.jpg")
    rc, peak, err = run("simpsons-infer", loop, work / "deep", "--model", model, "-o", work / "loop.csv", "-q", timeout=300)
    warned = sum(": warning: " in x for x in err.splitlines())
    row("infer a folder with a link to itself, a broken link, a FIFO, an unreadable folder; 1,100 nested folders", rc, peak, err,
        note=f"{rows_in(work / 'loop.csv')} rows (100 frames, the deepest, the unreadable one's if root); {warned} warning lines")
    (loop / "locked").chmod(0o755)
    remove_nested(work / "deep", deepest)
    rc, peak, err = run("simpsons-infer", loop / "pipe.jpg", frames[0], "--model", model, "-q", timeout=60)
    row("infer a FIFO given as input", rc, peak, err, note=last_line(err, "pipe.jpg"))

    # 7. --resume into files this model did not write
    ours = work / "ours.jsonl"
    run("simpsons-infer", hundred, "--model", model, "-o", ours, "-q")
    theirs = work / "theirs.csv"
    run("simpsons-infer", hundred, "--model", model, "-o", theirs, "-q")
    table = list(csv.reader(theirs.read_text().splitlines()))
    table[1][2] = "ned_flanders"  # as a model with another class would have written it
    buffer = io.StringIO()
    csv.writer(buffer).writerows(table)
    foreign = {
        "bad_last.jsonl": ours.read_text().splitlines()[0] + "\nnot json\n",
        "binary.jsonl": random.Random(0).randbytes(8192),
        "theirs.csv": buffer.getvalue(),
    }
    for name, content in foreign.items():
        path = work / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        before = path.read_bytes()
        rc, peak, err = run("simpsons-infer", hundred, "--model", model, "-o", path, "-q", "--resume")
        row(f"infer --resume into {name}", rc, peak, err, "yes" if path.read_bytes() == before else "NO", last_line(err))

    # 9. formula names, links to outputs; and the fuzz
    formulas = work / "formulas"
    formulas.mkdir()
    shutil.copy(frames[0], formulas / "=cmd|' -C calc'!A0.jpg")
    rc, peak, err = run("simpsons-infer", "=cmd|' -C calc'!A0.jpg", "--model", model, "-o", work / "formulas.csv", "-q", cwd=formulas)
    row("infer -o .csv: a file named =cmd|' -C calc'!A0.jpg, given by that name", rc, peak, err,
        note="its cell: " + next(csv.reader((work / "formulas.csv").read_text().splitlines()[1:]))[0])
    target = work / "store" / "rows.parquet"
    target.parent.mkdir()
    (work / "link.parquet").symlink_to(target)
    rc, peak, err = run("simpsons-infer", hundred, "--model", model, "-o", work / "link.parquet", "-q")
    row("infer -o link.parquet (a symbolic link)", rc, peak, err,
        note=f"still a link: {(work / 'link.parquet').is_symlink()}; its target written: {target.is_file()}")
    from runtime.files import Lock
    from runtime.metadata import sidecar_path

    real = work / "real.csv"
    (work / "alias.csv").symlink_to(real)
    with Lock(real):  # another run writes real.csv
        rc, peak, err = run("simpsons-infer", hundred, "--model", model, "-o", work / "alias.csv", "-q")
    row("infer -o alias.csv, a link to real.csv, which another run is writing", rc, peak, err, note=last_line(err))
    permuted = work / "permuted" / model.name
    permuted.parent.mkdir()
    shutil.copy(model, permuted)
    sidecar = json.loads(sidecar_path(model).read_text())
    sidecar_path(permuted).write_text(json.dumps({**sidecar, "classes": sidecar["classes"][::-1]}))  # its sha256 still matches
    rc, peak, err = run("simpsons-infer", hundred, "--model", permuted, "-q")
    row("infer with a sidecar whose classes are permuted (its sha256 valid)", rc, peak, err, note=last_line(err))
    fuzz_folder(work / "fuzz", 300)
    rc, peak, err = run("simpsons-infer", work / "fuzz", "--model", model, "-o", work / "fuzz.csv", "-q")
    row("infer 3,300 damaged JPEG/PNG/TIFF/WebP/GIF/BMP files", rc, peak, err, note=f"{rows_in(work / 'fuzz.csv')} rows of 3300")


def pipeline23(work: Path, row: Callable[..., None]) -> None:
    """The pipeline's memory cases of issue #23: ``simpsons manifest`` and ``simpsons audit`` on
    a data root whose class folder holds the memory bombs (a 16-bit PNG and an RGBA PNG of
    13000x13000, a 12000x12000 JPEG) and a 1 GB notes.txt, among easy frames made here."""
    from PIL import Image

    from tests.conftest import easy_dataset
    from tests.test_hostile_runtime import flat_png

    data = easy_dataset(work / "data", per_class=30, test_per_class=4)
    folder = data / "simpsons_dataset" / "agnes_skinner"
    flat_png(folder / "deep.png", 13000, 13000, "I;16")
    flat_png(folder / "alpha.png", 13000, 13000, "RGBA")
    Image.new("RGB", (12000, 12000), (200, 40, 40)).save(folder / "huge.jpg", quality=80)
    with open(folder / "notes.txt", "wb") as f:
        f.truncate(1 << 30)  # sparse: read as 1 GB of zeros, stored as nothing
    os.environ["SIMPSONS_CACHE"] = str(work / "cache")  # a cold run: every file is read
    out = work / "manifest"
    rc, peak, err = run("simpsons", "manifest", data, "--out", out, "--no-plots")
    planted = ("deep.png", "alpha.png", "huge.jpg", "notes.txt")
    found = {}
    if (out / "manifest.parquet").is_file():
        import polars as pl

        df = pl.read_parquet(out / "manifest.parquet")
        found = {Path(p).name: status for p, status in zip(df["path"], df["status"]) if Path(p).name in planted}
    row("manifest: 16-bit and RGBA PNGs of 13000x13000, a 12000x12000 JPEG, a 1 GB notes.txt in a class folder", rc, peak, err,
        note=", ".join(f"{name} {found.get(name, 'no row')}" for name in planted))
    rc, peak, err = run("simpsons", "audit", out)
    row("audit of that manifest", rc, peak, err, note=last_line(err))


def training23(work: Path, row: Callable[..., None]) -> None:
    """The pipeline's other cases of issue #23 on easy generated frames and a tiny model (32 px,
    one epoch): worker counts, kills, a full disk, resuming a copy, damaged manifests, weights
    and checkpoints, numbers out of range, a weak model's portable export, outputs inside the
    data, and the browser tests in a fresh clone where npm cannot install."""
    import json
    import pickle

    from PIL import Image

    from pipeline.engine.fingerprint import PROCESS_MIN_FILES
    from tests.conftest import TINY, easy_dataset
    from tests.test_hostile_pipeline import Payload, descendants, edited, survivors, without_mean

    data = easy_dataset(work / "data", per_class=30, test_per_class=4)
    manifest = work / "m" / "manifest.parquet"
    run("simpsons", "manifest", data, "--out", manifest.parent, "--no-plots")
    tiny = [*TINY[:TINY.index("--workers")], "--epochs", "1"]
    model = work / "run"
    rc, peak, err = run("simpsons", "train", "--manifest", manifest, "--out", model, *tiny, "--workers", "0")
    row("train, nothing hostile: the floor of the torch commands below (torch, a ResNet18, its optimizer)", rc, peak, err,
        note=last_line(err, "best val"))

    # 3. counts without bounds
    rc, peak, err = run("simpsons", "manifest", data, "--out", work / "m24", "--no-plots", "--workers", "24")
    row("manifest --workers 24", rc, peak, err, note=last_line(err, "capped"))

    # 4. kills
    many = work / "many" / "simpsons_dataset"
    for i in range(PROCESS_MIN_FILES + 200):
        folder = many / ("agnes_skinner", "apu_nahasapeemapetilon")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 16), (i % 256, i // 256, 90)).save(folder / f"{i:05d}.png")
    for signum in (signal.SIGKILL, signal.SIGTERM):
        cache = work / f"cache-{signum}"
        os.environ["SIMPSONS_CACHE"] = str(cache)
        proc = started("simpsons", "manifest", many.parent, "--out", work / "m-killed", "--workers", "2", "--no-plots")
        children: set[int] = set()
        while not next(cache.rglob("*.parquet"), None) and proc.poll() is None:  # the workers are at work
            children |= descendants(proc.pid)
            time.sleep(0.02)
        children |= descendants(proc.pid)
        proc.send_signal(signum)
        _, err = proc.communicate()
        left = len(survivors(children, within=10))
        row(f"manifest of {PROCESS_MIN_FILES + 200} files, {signal.Signals(signum).name} while its workers run", proc.returncode,
            -1, err, note=f"{len(children)} processes below it; still running 10 s later: {left}")
    del os.environ["SIMPSONS_CACHE"]
    killed = work / "killed"
    proc = started("simpsons", "train", "--manifest", manifest, "--out", killed, *tiny[:-1], "100", "--workers", "2")
    workers: set[int] = set()
    while not (killed / "last.pt").is_file() and proc.poll() is None:  # epoch 1 done: the workers load epoch 2
        workers |= descendants(proc.pid)
        time.sleep(0.05)
    workers |= descendants(proc.pid)
    proc.kill()
    proc.communicate()
    left = len(survivors(workers, within=1))
    config = json.loads((killed / "config.json").read_text())
    (killed / "config.json").write_text(json.dumps({**config, "epochs": 2}))
    rc, peak, err = run("simpsons", "train", "--resume", killed)
    row("train killed (SIGKILL) in epoch 2 with 2 data-loader workers, then --resume at once", rc, peak, err,
        note=f"{len(workers)} workers, running 1 s after the kill: {left}; {last_line(err, 'epoch') or last_line(err)}")

    # 5. a full disk
    rc, peak, err = run("simpsons", "train", "--manifest", manifest, "--out", work / "full", *tiny, "--workers", "0", file_limit=1 << 20)
    row("train where no file may pass 1 MB (best.pt is 45 MB)", rc, peak, err, note=last_line(err))

    # 7. --resume of a copy
    copy = work / "copy"
    shutil.copytree(model, copy)
    before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "epochs": 2}))
    rc, peak, err = run("simpsons", "train", "--resume", copy)
    same = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == before
    row("train --resume COPY (the copy's config.json names the original folder)", rc, peak, err, "yes" if same else "NO",
        note=f"the original byte-identical: {same}; the copy trained on: {json.loads((copy / 'history.json').read_text())[-1]['epoch'] == 2}")

    # 8. validation
    def damaged(name: str, damage: Callable[[Path], None]) -> Path:
        folder = work / name
        shutil.copytree(manifest.parent, folder)
        damage(folder)
        return folder

    for name, damage in [("stats.json without mean", without_mean), ("null paths", edited("path", None)),
                         ("labels outside its classes", edited("label", "zzz"))]:
        folder = damaged(name.replace(" ", "-"), damage)
        for step in [("train", "--manifest", folder / "manifest.parquet", "--out", work / "r", *tiny, "--workers", "0"),
                     ("evaluate", "--checkpoint", model / "best.pt", "--manifest", folder / "manifest.parquet", "--out", work / "e",
                      "--workers", "0"),
                     ("audit", folder)]:
            rc, peak, err = run("simpsons", *step)
            row(f"{step[0]}: a manifest with {name}", rc, peak, err, note=last_line(err))
    bad = work / "bad"
    bad.mkdir()
    (bad / "code.pt").write_bytes(pickle.dumps(Payload(bad / "ran")))
    (bad / "list.pt").write_bytes(pickle.dumps([1, 2, 3]))
    (bad / "empty.pt").write_bytes(b"")
    for name in ("code.pt", "list.pt", "empty.pt"):
        weights = [bad / name if x == "none" else x for x in tiny]
        rc, peak, err = run("simpsons", "train", "--manifest", manifest, "--out", work / "r", *weights, "--workers", "0")
        row(f"train --weights {name}", rc, peak, err, note=f"{last_line(err)}; code ran: {(bad / 'ran').exists()}")
        rc, peak, err = run("simpsons", "evaluate", "--checkpoint", bad / name, "--manifest", manifest, "--out", work / "e")
        row(f"evaluate --checkpoint {name}", rc, peak, err, note=last_line(err))
    for step in [("export", "--checkpoint", model / "best.pt", "--out", work / "nan.onnx", "--accept-known", "nan"),
                 ("manifest", data, "--out", work / "m-nan", "--val-fraction", "nan"),
                 *[("synth", work / "s", "--classes", "2", "--per-class", "1", "--size", size) for size in ("0x0", "-5x10", "60000x60000")]]:
        rc, peak, err = run("simpsons", *step)
        row(" ".join(str(x) for x in step if not isinstance(x, Path)), rc, peak, err, note=last_line(err))

    # 11. a weak model's portable export; 8. a model asking for a huge resize
    exported = work / "model.onnx"
    rc, peak, err = run("simpsons", "export", "--checkpoint", model / "best.pt", "--out", exported, "--portable")
    row("export --portable of a one-epoch 32 px model", rc, peak, err, note=last_line(err, "agree") or last_line(err))
    from dataclasses import replace

    from export.onnx_export import write_metadata
    from runtime.metadata import read_sidecar

    info = read_sidecar(exported)
    for size in (10**9, 10**5):
        hostile = work / f"resize-{size}.onnx"
        shutil.copy(exported, hostile)
        write_metadata(hostile, replace(info, preprocessing=replace(info.preprocessing, resize_size=size)))
        rc, peak, err = run("simpsons-infer", data / "kaggle_simpson_testset", "--model", hostile, "-q")
        row(f"infer with a model whose metadata says resize_size {size:.0e}", rc, peak, err, note=last_line(err))

    # 9. an output inside the data; identical runs, identical statistics
    inside = data / "simpsons_dataset" / "out"
    for attempt in (1, 2):
        rc, peak, err = run("simpsons", "manifest", data, "--out", inside)
        classes = json.loads((inside / "stats.json").read_text())["classes"] if rc == 0 else []
        row(f"manifest --out inside the data root, run {attempt}", rc, peak, err, note=f"classes: {len(classes)} (3 made)")
    shutil.rmtree(inside)
    stats = []
    for attempt in (1, 2):
        os.environ["SIMPSONS_CACHE"] = str(work / f"cache-stats-{attempt}")
        run("simpsons", "manifest", data, "--out", work / f"stats-{attempt}", "--no-plots", "--workers", "2")
        stats.append((work / f"stats-{attempt}" / "stats.json").read_text())
    del os.environ["SIMPSONS_CACHE"]
    row("two identical manifests (cold caches, 2 workers)", 0, -1, "", note=f"stats.json identical: {stats[0] == stats[1]}")

    # 10. the README's test command in a fresh clone where npm cannot install the page's packages
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", REPO, clone], check=True)
    fake = work / "bin"
    fake.mkdir()
    (fake / "npm").write_text("#!/bin/sh\necho 'npm ERR! network unreachable' >&2; exit 1\n")
    (fake / "npm").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    env.pop("SIMPSONS_REQUIRE_BROWSER", None)
    browser_tests = ["tests/test_web.py", "tests/test_audit.py::test_each_section_lists_exactly_the_planted_items_in_a_browser",
                     "tests/test_review.py::test_choices_with_mouse_and_keys_survive_a_reload_and_change_the_manifest_exactly"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *browser_tests],
                          cwd=clone, capture_output=True, text=True, env=env)
    import re

    totals = [x for x in done.stdout.splitlines() if re.search(r"\d+ (passed|skipped|failed|errors?)\b.* in [\d.]+s", x)]
    counts = totals[-1].strip("= ") if totals else "no summary line"
    reason = next((x.split(": ", 1)[-1] for x in done.stdout.splitlines() if x.startswith("SKIPPED")), "")
    row("the browser tests in a fresh clone where npm fails", done.returncode, -1, done.stdout + done.stderr,
        note=f"{counts}; {reason[:90]}")


if __name__ == "__main__":
    main()
