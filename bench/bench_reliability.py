"""Every hostile case of issue #15, planted and run through the real commands, one table:
exit code, peak memory (VmHWM of the command's own process), whether a traceback was printed,
whether the earlier output survived, and what a rerun found.

    .venv/bin/python bench/bench_reliability.py [--model bench/.work/portable/model.onnx]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, SAMPLE, WORK, files, peak_of, require_sample, with_peak

MODULES = {"simpsons": "pipeline.cli", "simpsons-infer": "runtime.cli"}


def command(tool: str, *args) -> list[str]:
    return with_peak(MODULES[tool], *args)


def run(tool: str, *args, timeout: int = 900) -> tuple[int, int, str]:
    done = subprocess.run(command(tool, *args), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    peak = peak_of(done.stderr)
    return done.returncode, peak, done.stderr


def started(tool: str, *args) -> subprocess.Popen:
    """In the background; Ctrl-C works in it even when this script runs where SIGINT is
    ignored (a background job of a non-interactive shell passes that on)."""
    return subprocess.Popen(command(tool, *args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=WORK / "portable" / "model.onnx")
    args = parser.parse_args()
    require_sample()
    if not args.model.is_file():
        sys.exit(f"{args.model}: no model (run bench/bench_portable.py first, or pass --model)")
    from PIL import Image

    work = WORK / "reliability"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    frames = [p for p in files(SAMPLE / "simpsons_dataset") if p.suffix == ".jpg"]
    rows: list[tuple[str, ...]] = []

    def row(case: str, rc: int, peak: int, stderr: str, survived: str = "", note: str = "") -> None:
        rows.append((case, str(rc), f"{peak}" if peak >= 0 else "", "yes" if "Traceback" in stderr else "no", survived, note))

    # 1. thin images
    thin = work / "thin"
    thin.mkdir()
    Image.new("RGB", (65000, 1), (200, 40, 40)).save(thin / "wide.png")
    Image.new("RGB", (1, 65000), (40, 160, 70)).save(thin / "tall.png")
    Image.new("RGB", (30000, 2), (30, 90, 200)).save(thin / "strip.png")
    for model in (args.model, args.model.with_suffix(".portable.onnx")):
        rc, peak, err = run("simpsons-infer", thin, "--model", model, "-o", work / "thin.csv", "--threads", "2", "-q")
        row(f"3 PNGs of 65000x1, 1x65000, 30000x2 ({model.name})", rc, peak, err, note="all 3 classified")

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
        rc, peak, err = run("simpsons-infer", data / "simpsons_dataset", "--model", args.model, "-o", work / f"odd{suffix}", "-q")
        row(f"infer -o {suffix}: a file name that is not UTF-8", rc, peak, err, note="81 rows, the odd name escaped")

    # 3. a killed Parquet/JSON run, then a rerun
    many = work / "many"
    many.mkdir()
    for i, f in enumerate(frames[:600]):
        (many / f"{i:04d}.jpg").symlink_to(f)
    for suffix in (".parquet", ".json"):
        out = work / f"old{suffix}"
        run("simpsons-infer", many, "--model", args.model, "-o", out, "-q")
        before = out.read_bytes()
        process = started("simpsons-infer", many, "--model", args.model, "-o", out, "-q")
        time.sleep(2.5)
        process.kill()
        process.wait()
        intact = out.read_bytes() == before
        stale = len(list(work.glob(f".old{suffix}.*.tmp")))
        rc, peak, err = run("simpsons-infer", many, "--model", args.model, "-o", out, "-q")
        left = len(list(work.glob(f".old{suffix}.*.tmp")))
        row(f"infer -o {suffix} killed (SIGKILL at 2.5 s), then rerun", rc, peak, err, "yes" if intact else "NO",
            f"temporaries: {stale} after the kill, {left} after the rerun")

    # 5. two writers at once
    first = started("simpsons-infer", many, "--model", args.model, "-o", work / "same.csv", "-q")
    time.sleep(1.5)
    rc, peak, err = run("simpsons-infer", many, "--model", args.model, "-o", work / "same.csv", "-q")
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
        rc, peak, err = run("simpsons-infer", many, "--model", args.model, *a)
        lines = [x for x in err.splitlines() if not x.startswith("PEAK_MB")]
        row(case, rc, peak, err, note=(lines[-1][:90] if lines else ""))

    # 7. a huge batch size on 2000 and 5000 files
    for count in (2000, 5000):
        big = work / f"big{count}"
        big.mkdir()
        for i in range(count):
            (big / f"{i:05d}.jpg").symlink_to(frames[i % len(frames)])
        for batch in ("32", "100000"):
            rc, peak, err = run("simpsons-infer", big, "--model", args.model, "-o", work / f"big{batch}.csv", "-q", "--batch-size", batch)
            row(f"infer --batch-size {batch}, {count} files", rc, peak, err)

    # 7b. CSV: Ctrl-C, then --resume
    out = work / "rows.csv"
    process = started("simpsons-infer", work / "big5000", "--model", args.model, "-o", out, "-q")
    time.sleep(4.0)
    process.send_signal(signal.SIGINT)
    rc = process.wait()
    err = process.stderr.read()
    kept = len(out.read_text().splitlines()) - 1
    rc2, peak, err2 = run("simpsons-infer", work / "big5000", "--model", args.model, "-o", out, "-q", "--resume")
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

    print("| case | exit | peak MB | traceback | earlier output survived | what the run or rerun found |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
