"""Hostile inputs to the runtime and ``simpsons-infer`` (issue 23): every file planted here made
a run crash, hang, lose rows or exhaust memory before its fix. The files are made here, small,
from scratch: nothing depends on ../shared."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.cli import main as infer
from runtime.preprocess import ImageError, load_image
from tests import tiny_models as tiny
from tests.conftest import easy_dataset

RED = (200, 40, 40)


# ----- hostile files, made here -----

def tiff_with_float_offset(path: Path) -> Path:
    """A TIFF whose strip offset is stored as a DOUBLE: Pillow seeks to a float (TypeError)."""
    buffer = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 5, 55, 255)).save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0], 12):
        tag, _, _, offset = struct.unpack_from("<HHII", data, entry)
        if tag == 273:  # StripOffsets
            struct.pack_into("<HII", data, entry + 2, 12, 1, len(data))  # DOUBLE, stored at the end
            data += struct.pack("<d", offset)
    path.write_bytes(bytes(data))
    return path


def jpeg_with_mistyped_exif(path: Path) -> Path:
    """A 40x30 JPEG whose EXIF says "rotate 90 clockwise" (orientation 6) beside an ImageWidth
    stored as a RATIONAL: re-encoding that EXIF, as ImageOps.exif_transpose does, raises
    struct.error. A blue square marks the stored top-left corner."""
    entries = struct.pack("<HHII", 256, 5, 1, 38) + struct.pack("<HHII", 274, 3, 1, 6)  # 38: where the rational is
    tiff = b"II*\x00" + struct.pack("<IH", 8, 2) + entries + struct.pack("<I", 0) + struct.pack("<II", 1, 3)
    img = Image.new("RGB", (40, 30), RED)
    img.paste((30, 90, 200), (0, 0, 10, 10))
    img.save(path, quality=95, exif=b"Exif\x00\x00" + tiff)
    return path


def flat_png(path: Path, width: int, height: int, mode: str) -> Path:
    """A valid PNG of one flat colour, compressed a block of rows at a time: a 13000x13000
    picture costs this test a few megabytes, and a careless decoder gigabytes."""
    depth, colour, pixel = {"I;16": (16, 0, b"\x0f\xa0"), "RGBA": (8, 6, bytes((*RED, 128)))}[mode]
    row = b"\x00" + pixel * width  # filter type 0, then the pixels
    rows_per_block = max(1, (4 << 20) // len(row))
    packer = zlib.compressobj(1)
    body = [packer.compress(row * min(rows_per_block, height - top)) for top in range(0, height, rows_per_block)]
    body.append(packer.flush())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))
    return path


def lookalikes(folder: Path) -> tuple[Path, Path]:
    """Two pictures whose names were shown as the same text: literally ``lit_\\xff.jpg`` (a
    backslash, x, f, f; 40x30) and ``lit_`` with the byte ff, which is not UTF-8 (48x32)."""
    literal, raw = folder / "lit_\\xff.jpg", folder / os.fsdecode(b"lit_\xff.jpg")
    Image.new("RGB", (40, 30), RED).save(literal, format="JPEG")
    Image.new("RGB", (48, 32), (30, 90, 200)).save(raw, format="JPEG")
    return literal, raw


# ----- models and folders -----

@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny.plain(tmp_path_factory.mktemp("model") / "model.onnx", ood_threshold=-1.0)


def make_portable(plain: Path, out: Path) -> Path:
    from export.onnx_export import write_metadata
    from export.portable import make_portable as wrap

    wrap(plain, out, tiny.PRE, temperature=1.0)
    write_metadata(out, tiny.info(variant="portable", ood_threshold=-1.0))
    return out


@pytest.fixture(scope="module")
def portable(model: Path) -> Path:
    return make_portable(model, model.with_name("model.portable.onnx"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Twelve colour pictures the tiny model knows."""
    return easy_dataset(tmp_path / "easy", per_class=1, test_per_class=4) / "kaggle_simpson_testset"


def read_rows(out: Path) -> list[dict]:
    if out.suffix == ".csv":
        with out.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    if out.suffix == ".json":
        return json.loads(out.read_text(encoding="utf-8"))
    import pyarrow.parquet as pq

    return pq.read_table(out).to_pylist()


def peak_run(args: list[str], timeout: int = 300) -> tuple[int, int, str]:
    """``simpsons-infer ARGS`` in a fresh process: exit code, peak memory (VmHWM, MB), stderr."""
    code = ("import re, sys; from runtime.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024)")
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    rc, peak = map(int, done.stdout.split()[-2:])
    return rc, peak, done.stderr


# ----- 1. one hostile file never stops a run -----

@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_a_file_that_breaks_pillow_is_a_row_in_every_format(folder: Path, model: Path, tmp_path: Path, suffix: str, capsys):
    tiff_with_float_offset(folder / "evil.tif")
    out = tmp_path / f"rows{suffix}"
    assert infer([str(folder), "--model", str(model), "-o", str(out), "-q"]) == 0
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    assert len(rows) == 13 and rows["evil.tif"]["status"].startswith("cannot decode:")
    assert sum(r["status"] == "ok" for r in rows.values()) == 12
    assert "Traceback" not in capsys.readouterr().err


def test_decode_errors_of_any_kind_become_image_errors_but_memory_errors_pass(tmp_path: Path, monkeypatch):
    from runtime import preprocess

    path = tiff_with_float_offset(tmp_path / "evil.tif")
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(path)
    for raised, expected in [(IndexError("list index out of range"), ImageError), (KeyError(7), ImageError),
                             (MemoryError(), MemoryError), (KeyboardInterrupt(), KeyboardInterrupt)]:
        def broken(img, raised=raised):
            raise raised

        monkeypatch.setattr(preprocess, "to_rgb", broken)
        with pytest.raises(expected):
            load_image(jpeg_with_mistyped_exif(tmp_path / "ok.jpg"))


def test_a_mistyped_exif_tag_still_decodes_upright(tmp_path: Path):
    """The orientation itself is readable: the picture is turned as it says; only re-encoding
    the EXIF (which the runtime never needs) failed."""
    img = load_image(jpeg_with_mistyped_exif(tmp_path / "evil_exif.jpg"))
    assert img.size == (30, 40)  # turned 90 degrees clockwise
    top_right = np.asarray(img)[:8, -8:].mean(axis=(0, 1))
    assert top_right[2] > 150 and top_right[0] < 100  # the stored top-left (blue) is now top-right


def test_an_unreadable_orientation_decodes_as_stored(tmp_path: Path):
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 274, 2, 4, 0x00343434) + struct.pack("<I", 0)
    Image.new("RGB", (40, 30), RED).save(tmp_path / "odd.jpg", exif=b"Exif\x00\x00" + tiff)  # orientation "444" as text
    assert load_image(tmp_path / "odd.jpg").size == (40, 30)


# ----- 2. memory bound independent of the input -----

@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> Path:
    """Pictures far above the pixel limit, under Pillow's own, and four just under it."""
    root = tmp_path_factory.mktemp("bombs")
    flat_png(root / "deep.png", 13000, 13000, "I;16")  # 357 KB on disk; was 4.46 GB
    flat_png(root / "alpha.png", 13000, 13000, "RGBA")  # was 3.40 GB
    at_limit = flat_png(root / "limit_0.png", 5600, 5700, "RGBA")  # 31.9 MP, each decoded alone
    for i in range(1, 4):
        (root / f"limit_{i}.png").symlink_to(at_limit)
    return root


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from Linux's /proc")
def test_pixel_bombs_are_refused_and_large_pictures_take_turns(bombs: Path, model: Path, tmp_path: Path):
    out = tmp_path / "rows.csv"
    rc, peak, err = peak_run([bombs, "--model", model, "-o", out, "-q", "--threads", "4"])
    rows = {Path(r["path"]).name: r["status"] for r in read_rows(out)}
    assert rc == 0 and peak < 600, (rc, peak, err[-500:])
    assert rows["deep.png"] == rows["alpha.png"] == "too large: 13000x13000 pixels (169 MP) is above the 32 MP limit of one picture"
    assert [rows[f"limit_{i}.png"] for i in range(4)] == ["ok"] * 4
    assert "Traceback" not in err and "DecompressionBomb" not in err


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from Linux's /proc")
def test_a_huge_jpeg_reaches_the_portable_model_reduced(portable: Path, tmp_path: Path):
    Image.new("L", (12000, 12000), 90).save(tmp_path / "huge.jpg", quality=50)  # 144 MP: was 2.70 GB
    rc, peak, err = peak_run([tmp_path / "huge.jpg", "--model", portable, "-o", tmp_path / "rows.csv", "-q"])
    assert rc == 0 and peak < 250, (rc, peak, err[-500:])
    assert read_rows(tmp_path / "rows.csv")[0]["status"] == "ok"


def test_portable_frames_of_any_size_run_in_whole_batches_in_input_order(portable: Path, monkeypatch):
    """Frames of two sizes, alternating, and a broken one: each model run takes a whole batch
    (every frame is brought to one square size first), and every answer comes back in input
    order, as frame by frame."""
    from runtime import classifier

    clf = classifier.Classifier(portable, device="cpu")
    runs = []
    real = clf.run
    monkeypatch.setattr(clf, "run", lambda batch: runs.append(batch.shape) or real(batch))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (20, 30, 3) if i % 2 else (24, 18, 3), dtype=np.uint8) for i in range(16)]
    side = clf.info.preprocessing.resize_size
    batched = list(clf.iter_predict([*frames[:5], np.zeros((2, 2), np.float64), *frames[5:]], top_k=3, batch_size=4))
    assert runs[:5] == [(4, side, side, 3), (3, side, side, 3), (4, side, side, 3), (4, side, side, 3), (1, side, side, 3)]
    assert batched[5].prediction is None and "uint8" in batched[5].error
    alone = [clf.predict([frame], top_k=3)[0] for frame in frames]
    answers = [r.prediction for r in batched[:5] + batched[6:]]
    assert [p.top_k[0][0] for p in answers] == [p.top_k[0][0] for p in alone]
    np.testing.assert_allclose([p.confidence for p in answers], [p.confidence for p in alone], atol=1e-5)


def test_the_decoding_budget_lets_large_pictures_take_turns():
    import threading
    import time

    from runtime.preprocess import PixelBudget

    budget, most = PixelBudget(100), []

    def decode(pixels: int) -> None:
        with budget.hold(pixels):
            most.append(budget.used)
            time.sleep(0.01)

    threads = [threading.Thread(target=decode, args=(pixels,)) for pixels in (60, 60, 30, 500, 10, 90)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(most) == 6 and max(most) <= 100 and budget.used == 0


# ----- 3. counts without bounds -----

def test_top_k_and_threads_are_capped_with_a_warning(folder: Path, model: Path, tmp_path: Path, monkeypatch, capsys):
    from runtime import classifier
    from runtime.parallel import usable_cores

    limit = 4 * usable_cores()
    real = classifier._session

    def session(path, device, threads):
        assert threads <= limit  # never start 100000 threads, even where the cap is missing
        return real(path, device, threads)

    monkeypatch.setattr(classifier, "_session", session)
    out = tmp_path / "rows.csv"
    assert infer([str(folder), "--model", str(model), "-o", str(out), "--top-k", "1000", "--threads", "100000", "-q"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"simpsons-infer: warning: --threads 100000 capped at {limit}: 4 per core here; more only wait for one another",
                        "simpsons-infer: warning: --top-k 1000 capped at 3: the model has no more classes"]
    header = out.read_text().splitlines()[0]
    assert header.endswith("top3_label,top3_prob") and "top4" not in header


# ----- 5. a full disk -----

class FillingDisk:
    """A file on a disk with ``room`` bytes left: a write takes what still fits, the next one
    fails with ENOSPC, as a real full disk does."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data):
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taken = self.file.write(data[: self.room])
        self.room -= len(data[: self.room])
        return taken

    def __getattr__(self, name):
        return getattr(self.file, name)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_full_disk_keeps_whole_rows_only_and_names_the_file(folder: Path, model: Path, tmp_path: Path, monkeypatch, capsys,
                                                              suffix: str):
    from runtime import writers

    out = tmp_path / f"rows{suffix}"
    assert infer([str(folder), "--model", str(model), "-o", str(out), "-q"]) == 0
    lines = out.read_bytes().splitlines(keepends=True)
    room = sum(map(len, lines[:4])) + len(lines[4]) // 2  # 3 or 4 whole lines, then half of one
    out.unlink()
    monkeypatch.setattr(writers, "open", lambda *a, **k: FillingDisk(open(*a, **k), room), raising=False)
    assert infer([str(folder), "--model", str(model), "-o", str(out), "-q"]) == 2
    assert out.read_bytes() == b"".join(lines[:4])
    err = capsys.readouterr().err
    assert err == f"simpsons-infer: error: {out}: cannot write (No space left on device); every row in it is whole\n"


# ----- 7. --resume on a file this run did not write -----

@pytest.fixture
def other_model(tmp_path: Path) -> Path:
    """Same shape, other classes: its rows must not be continued by ``model``."""
    return tiny.plain(tmp_path / "other.onnx", classes=("bart_simpson", "homer_simpson", "lisa_simpson"))


def test_resume_refuses_a_file_that_is_not_this_models_rows(folder: Path, model: Path, other_model: Path, tmp_path: Path, capsys):
    ours = tmp_path / "ours.jsonl"
    assert infer([str(folder), "--model", str(model), "-o", str(ours), "-q"]) == 0
    row = ours.read_text().splitlines()[0]
    theirs = tmp_path / "theirs.csv"
    assert infer([str(folder), "--model", str(other_model), "-o", str(theirs), "-q"]) == 0
    rng = np.random.default_rng(7)
    cases = {
        "bad_last.jsonl": (row + "\n" + "not json\n", "line 2 is not JSON"),
        "list.jsonl": (row + "\n[1, 2]\n", "line 2 is not a row"),
        "keys.jsonl": (row + '\n{"path": "a.jpg"}\n', "line 2 is not a row"),
        "label.jsonl": (row + "\n" + row.replace('"abraham_grampa_simpson"', '"bart_simpson"') + "\n", "names the class 'bart_simpson'"),
        "foreign_half.jsonl": ("hello", "line 1 is neither a whole row nor the start of one"),
        "binary.jsonl": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "is not UTF-8 text"),
        "no_breaks.csv": (b"x" * (2 << 20), "line 1 is longer than 1048576 bytes"),
        "theirs.csv": (theirs.read_bytes(), "line 2 names the class 'bart_simpson', which this model does not have"),
        "columns.csv": ("path,status\r\na.jpg,ok\r\n", "line 1 holds other columns than this run's"),
    }
    capsys.readouterr()
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        before = path.read_bytes()
        assert infer([str(folder), "--model", str(model), "-o", str(path), "-q", "--resume"]) == 2, name
        err = capsys.readouterr().err
        assert message in err and "cannot --resume into it" in err and err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert path.read_bytes() == before, name  # nothing cut, nothing appended


# ----- 9. smaller: formulas, links, sidecars, messages -----

def test_csv_cells_that_look_like_formulas_are_text_and_resume_reads_them_back(tmp_path: Path, monkeypatch):
    model = tiny.plain(tmp_path / "model.onnx", classes=("=HYPERLINK(\"http://x\")", "+green", "@blue"))
    data = tmp_path / "data"
    data.mkdir()
    names = ["=cmd|' -C calc'!A0.jpg", "-1+2.jpg", "'quoted.jpg", "plain.jpg"]
    for name in names:
        Image.new("RGB", (40, 30), RED).save(data / name, format="JPEG")
    monkeypatch.chdir(data)  # so the path cells start with the names themselves
    out = tmp_path / "rows.csv"
    args = ["--model", str(model), "-o", str(out), "-q", "--no-unknown", "--", *names]
    assert infer(args) == 0
    with out.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert [r[0] for r in rows] == ["'=cmd|' -C calc'!A0.jpg", "'-1+2.jpg", "''quoted.jpg", "plain.jpg"]
    assert {r[2] for r in rows} == {"'=HYPERLINK(\"http://x\")"} and float(rows[0][4]) < 0  # numbers stay numbers
    assert infer(["--resume", *args]) == 0
    assert len(out.read_text().splitlines()) == 5  # the escaped last path was found: nothing added


NAMES = ["plain.jpg", "a\\b.jpg", "a\\\\xff.jpg", "lit_\\xff.jpg", os.fsdecode(b"lit_\xff.jpg"), "c1_\x85.jpg",
         os.fsdecode(b"raw_\x85.jpg"), "raw_\\x85.jpg", "line\nbreak.jpg", "line\\x0abreak.jpg", "sep\u2028.jpg", "sep\\u2028.jpg",
         "smile\U0001f600.jpg", "tag\U000e0001.jpg", "tag\\U000e0001.jpg", "end\\"]


@pytest.mark.skipif(os.sep == "\\", reason="on Windows a backslash separates folders and is shown as it is")
def test_no_two_names_are_shown_alike_and_each_is_read_back():
    from runtime.listing import display_path, from_display, odd_name

    shown = [display_path(name) for name in NAMES]
    assert len(set(shown)) == len(NAMES) and all(s.isprintable() for s in shown), shown
    assert [from_display(s) for s in shown] == NAMES
    assert shown[:2] == ["plain.jpg", "a\\\\b.jpg"] and shown[4] == "lit_\\xff.jpg" and shown[5] == "c1_\\u0085.jpg"
    assert [odd_name(name) for name in NAMES[3:7]] == [False, True, True, True]  # a backslash is text; a lone byte or C1 control is not


@pytest.mark.skipif(os.sep == "\\", reason="on Windows a backslash separates folders and is shown as it is")
def test_two_names_once_shown_alike_are_two_rows_and_resume_tells_them_apart(model: Path, tmp_path: Path):
    """A file literally named ``lit_\\xff.jpg`` and one with the byte ff were shown alike: two
    rows of one path, and --resume after the second found the first and wrote the second again."""
    folder = tmp_path / "odd"
    folder.mkdir()
    lookalikes(folder)
    out = tmp_path / "rows.csv"
    args = [str(folder), "--model", str(model), "-o", str(out), "-q"]
    assert infer(args) == 0
    rows = read_rows(out)
    assert [(r["path"], r["status"]) for r in rows] == [(f"{folder}/lit_\\\\xff.jpg", "ok"), (f"{folder}/lit_\\xff.jpg", "ok")]
    assert infer([*args, "--resume"]) == 0  # nothing left to do
    assert read_rows(out) == rows


class FullStream(io.StringIO):
    """Standard output redirected to a full disk, after ``room`` characters."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room

    def write(self, text: str) -> int:
        self.room -= len(text)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(text)


@pytest.mark.parametrize("room", [0, 200])
def test_messages_name_standard_output_never_none(folder: Path, model: Path, monkeypatch, capsys, room: int):
    monkeypatch.setattr(sys, "stdout", FullStream(room))  # 0: the table's header fails; 200: a row does
    assert infer([str(folder), "--model", str(model), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("simpsons-infer: error: standard output: cannot write (No space left on device)\n") and "None" not in err


def test_an_alias_of_the_output_shares_its_lock(folder: Path, model: Path, tmp_path: Path, capsys):
    from runtime.files import Lock

    real = tmp_path / "real.csv"
    (tmp_path / "alias.csv").symlink_to(real)
    with Lock(real):  # another run writes real.csv
        assert infer([str(folder), "--model", str(model), "-o", str(tmp_path / "alias.csv"), "-q"]) == 2
    assert "alias.csv is being written by another run" in capsys.readouterr().err and not real.exists()


@pytest.mark.parametrize("suffix", [".parquet", ".json"])
def test_replaced_outputs_are_written_through_a_symbolic_link(folder: Path, model: Path, tmp_path: Path, suffix: str):
    target = tmp_path / "store" / f"rows{suffix}"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / f"link{suffix}"
    link.symlink_to(target)
    assert infer([str(folder), "--model", str(model), "-o", str(link), "-q"]) == 0
    assert link.is_symlink() and len(read_rows(target)) == 12
    assert not list(target.parent.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_sidecar_that_contradicts_the_models_metadata_is_refused(folder: Path, tmp_path: Path, capsys):
    from export.onnx_export import write_metadata
    from runtime.metadata import sidecar_path

    model = tiny.save(tiny.network(), tmp_path / "model.onnx", None)
    write_metadata(model, tiny.info())
    image = str(folder / "agnes_skinner_0.jpg")
    assert infer([image, "--model", str(model), "-q"]) == 0
    sidecar = json.loads(sidecar_path(model).read_text())
    sidecar_path(model).write_text(json.dumps({**sidecar, "classes": sidecar["classes"][::-1]}))  # its sha256 still matches
    capsys.readouterr()
    assert infer([image, "--model", str(model), "-q"]) == 2
    assert capsys.readouterr().err == (f"simpsons-infer: error: {model}: its sidecar model.json contradicts the metadata inside it "
                                       "(classes); the model's own metadata is the truth: re-export, or delete the sidecar\n")


@pytest.mark.parametrize("field, value", [("resize_size", 10**9), ("resize_size", 3 * 32), ("image_size", 60000)])
def test_a_model_asking_for_a_huge_resize_is_refused_at_load(folder: Path, tmp_path: Path, capsys, field: str, value: int):
    """resize_size 1e9 in the metadata was a MemoryError traceback, 1e5 the process killed for
    memory: every picture is resized to it before the crop. Above twice the crop is refused."""
    from dataclasses import replace

    from export.onnx_export import write_metadata

    model = tiny.save(tiny.network(), tmp_path / "model.onnx", None)
    info = tiny.info()
    write_metadata(model, replace(info, preprocessing=replace(info.preprocessing, **{field: value})))
    assert infer([str(folder), "--model", str(model), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"simpsons-infer: error: {model}: malformed metadata: {field} = {value}") and err.count("\n") == 1


# ----- 6. listing -----

def warnings_in(err: str) -> list[str]:
    return [line.removeprefix("simpsons-infer: warning: ") for line in err.splitlines() if ": warning: " in line]


def test_a_symbolic_link_loop_is_walked_once(folder: Path, model: Path, tmp_path: Path, capsys):
    (folder / "self").symlink_to(".")
    Image.new("RGB", (40, 30), RED).save(folder / "zz_after_the_loop.jpg")
    out = tmp_path / "rows.csv"
    assert infer([str(folder), "--model", str(model), "-o", str(out), "-q"]) == 0
    paths = [r["path"] for r in read_rows(out)]
    assert len(paths) == len(set(paths)) == 13 and paths[-1].endswith("zz_after_the_loop.jpg")
    assert warnings_in(capsys.readouterr().err) == [
        f"{folder}/self: the same folder as {folder}, already listed (a symbolic link); skipped"]


def test_an_unreadable_folder_is_a_warning_and_the_rest_goes_on(folder: Path, model: Path, tmp_path: Path, monkeypatch, capsys):
    locked = folder / "locked"
    locked.mkdir()
    Image.new("RGB", (40, 30), RED).save(locked / "hidden.jpg")
    real = os.scandir

    def scandir(path):  # as chmod 000 does, also where the tests run as root
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "rows.csv"
    assert infer([str(folder), "--model", str(model), "-o", str(out), "-q"]) == 0
    assert len(read_rows(out)) == 12
    assert warnings_in(capsys.readouterr().err) == [f"{locked}: cannot read the folder (Permission denied); skipped"]


def test_deeply_nested_folders_are_no_recursion_error(tmp_path: Path, monkeypatch):
    from runtime.listing import Listing

    deep = bottom = tmp_path / "d"
    deep.mkdir()
    for _ in range(1099):  # mkdir(parents=True) itself recurses
        bottom = bottom / "d"
        bottom.mkdir()
    Image.new("RGB", (40, 30), RED).save(bottom / "deep.jpg")
    try:
        assert list(Listing([deep])) == [bottom / "deep.jpg"]
    finally:  # pytest's own clean-up recurses, and would fail on this tree; relative names are faster here
        monkeypatch.chdir(bottom)
        os.unlink("deep.jpg")
        for _ in range(1100):
            os.chdir("..")
            os.rmdir("d")


@pytest.mark.timeout(60)
def test_fifos_and_broken_links_are_warnings_not_hangs(folder: Path, model: Path, tmp_path: Path, capsys):
    os.mkfifo(folder / "pipe.jpg")
    os.mkfifo(tmp_path / "given.jpg")
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    out = tmp_path / "rows.csv"
    assert infer([str(tmp_path / "given.jpg"), str(folder), "--model", str(model), "-o", str(out), "-q"]) == 0
    assert len(read_rows(out)) == 12
    assert warnings_in(capsys.readouterr().err) == [
        f"{tmp_path}/given.jpg: not a regular file (a FIFO, socket or device); skipped",
        f"{folder}/gone.jpg: a broken symbolic link; skipped",
        f"{folder}/pipe.jpg: not a regular file (a FIFO, socket or device); skipped",
    ]
    with pytest.raises(ImageError, match="not a regular file"):  # the decoder too never opens one and waits
        load_image(folder / "pipe.jpg")


# ----- the decoder fuzz: every mutated file is a row or a reason, never a crash -----
#
# Fast lane (every run): FAST_CASES mutations of each of the seed files below, a few seconds.
# Large lane, opt-in: SIMPSONS_FUZZ_CASES=5000 pytest -m fuzz tests/test_hostile_runtime.py
# (cases per seed file; marked ``fuzz`` and skipped unless the variable is set, so plain
# ``pytest`` and ``make test-fast``, whose -m would override a deselection in addopts, stay fast).

FAST_CASES = 60


def seed_files() -> dict[str, bytes]:
    """Small valid pictures of each format Pillow reads for us, with the parts hostile files
    attack: EXIF with an orientation, alpha, a palette, 16 bits, CMYK, compressed TIFF strips."""
    picture = Image.new("RGB", (24, 16), RED)
    picture.paste((30, 90, 200), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    formats = {
        "jpg": (picture, {"format": "JPEG", "quality": 80, "exif": exif.tobytes()}),
        "progressive.jpg": (picture, {"format": "JPEG", "progressive": True}),
        "png": (picture.convert("RGBA"), {"format": "PNG", "exif": exif.tobytes()}),
        "16bit.png": (Image.fromarray(np.arange(24 * 16, dtype=np.uint16).reshape(16, 24) * 150), {"format": "PNG"}),
        "palette.png": (picture.convert("P"), {"format": "PNG", "transparency": 0}),
        "tif": (picture.convert("CMYK"), {"format": "TIFF"}),
        "lzw.tif": (picture, {"format": "TIFF", "compression": "tiff_lzw", "exif": exif.tobytes()}),
        "webp": (picture, {"format": "WEBP", "quality": 80, "exif": exif.tobytes()}),
        "lossless.webp": (picture.convert("RGBA"), {"format": "WEBP", "lossless": True}),
        "gif": (picture.convert("P"), {"format": "GIF"}),
        "bmp": (picture, {"format": "BMP"}),
    }
    out = {}
    for name, (img, options) in formats.items():
        buffer = io.BytesIO()
        img.save(buffer, **options)
        out[name] = buffer.getvalue()
    return out


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three small damages: give a TIFF or EXIF entry another type, flip a bit, write
    a boundary value (a byte, or a 32-bit length or offset), repeat or drop a span, insert
    junk; rarely, cut the end. The signature
    (8 bytes) mostly survives, and a PNG's chunk checksums are made right again, so each
    format's own parser runs and meets the damage instead of stopping at the door."""
    data = bytearray(data)
    for _ in range(rng.integers(1, 4)):
        low = 8 if rng.random() < 0.9 else 0
        at = int(rng.integers(low, len(data) - 4))
        kind = rng.choice(["retype", "bit", "byte", "word", "repeat", "drop", "junk", "cut"],
                          p=[0.2, 0.2, 0.15, 0.15, 0.1, 0.1, 0.05, 0.05])
        if kind == "retype":
            retype_tiff_entry(data, rng)
        elif kind == "bit":
            data[at] ^= 1 << int(rng.integers(8))
        elif kind == "byte":
            data[at] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFE, 0xFF]))
        elif kind == "word":
            struct.pack_into(">I" if rng.random() < 0.5 else "<I", data, at, int(rng.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 65535, 65536])))
        elif kind == "repeat":
            data[at:at] = data[at : at + int(rng.integers(1, 64))]
        elif kind == "drop":
            del data[at : at + int(rng.integers(1, 16))]
        elif kind == "junk":
            data[at:at] = rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8).tobytes()
        else:
            del data[at:]
        if len(data) < 16:
            break
    return png_checksums(bytes(data)) if data.startswith(b"\x89PNG") else bytes(data)


def retype_tiff_entry(data: bytearray, rng: np.random.Generator) -> None:
    """Give one entry of the first TIFF directory in ``data`` (a TIFF, or the EXIF block of a
    JPEG, PNG or WebP) another of the 12 types: the confusion that made a strip offset a float
    (TypeError in Pillow) and an EXIF width a fraction (struct.error)."""
    found = [at for at in (data.find(b"II*\x00"), data.find(b"MM\x00*")) if at >= 0]
    if not found:
        return
    start = min(found)
    order = "<" if data[start] == ord("I") else ">"
    try:
        directory = start + struct.unpack_from(order + "I", data, start + 4)[0]
        entries = struct.unpack_from(order + "H", data, directory)[0]
        entry = directory + 2 + 12 * int(rng.integers(max(1, min(entries, 64))))
        struct.pack_into(order + "H", data, entry + 2, int(rng.integers(1, 13)))
    except struct.error:  # the directory lies outside the data
        pass


def png_checksums(data: bytes) -> bytes:
    """The PNG with each chunk's CRC recomputed, as far as its chunk lengths still hold."""
    out, at = bytearray(data), 8
    while at + 12 <= len(out):
        length = struct.unpack_from(">I", out, at)[0]
        end = at + 8 + length
        if end + 4 > len(out):
            break
        struct.pack_into(">I", out, end, zlib.crc32(out[at + 4 : end]))
        at = end + 4
    return bytes(out)


def fuzz_folder(root: Path, cases: int) -> list[Path]:
    """``cases`` mutations of each seed file, each from its own fixed seed."""
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for number, (name, data) in enumerate(sorted(seed_files().items())):
        for case in range(cases):
            path = root / f"{case:05d}.{name}"
            path.write_bytes(mutate(data, np.random.default_rng([number, case])))
            files.append(path)
    return files


def check_fuzz(files: list[Path], root: Path, model: Path, tmp_path: Path, capsys) -> None:
    from runtime.preprocess import preprocess, square

    for path in files:  # the runtime's own entry points: a picture, or ImageError; nothing else
        for call in (load_image, lambda p: preprocess(p, tiny.PRE), lambda p: square(p, tiny.PRE)):
            try:
                call(path)
            except ImageError as e:
                assert str(e) and "\n" not in str(e), (path.name, str(e))
    out = tmp_path / "fuzz.csv"
    assert infer([str(root), "--model", str(model), "-o", str(out), "-q"]) in (0, 1)
    rows = read_rows(out)
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in files)
    assert all(r["status"] == "ok" or (r["status"] and r["label"] == "") for r in rows)
    assert "Traceback" not in capsys.readouterr().err


def test_mutated_pictures_are_rows_or_reasons(model: Path, tmp_path: Path, capsys):
    root = tmp_path / "fuzz"
    check_fuzz(fuzz_folder(root, FAST_CASES), root, model, tmp_path, capsys)


@pytest.mark.fuzz
@pytest.mark.skipif("SIMPSONS_FUZZ_CASES" not in os.environ, reason="the large fuzz: set SIMPSONS_FUZZ_CASES (cases per seed file)")
def test_many_mutated_pictures_are_rows_or_reasons(model: Path, tmp_path: Path, capsys):
    root = tmp_path / "fuzz"
    check_fuzz(fuzz_folder(root, int(os.environ["SIMPSONS_FUZZ_CASES"])), root, model, tmp_path, capsys)


def test_an_unexpected_error_leaves_no_temporary_behind(folder: Path, model: Path, tmp_path: Path, monkeypatch):
    from runtime import classifier
    from runtime.files import Lock

    real = classifier.Classifier.iter_predict

    def buggy(self, *args, **kwargs):
        for i, result in enumerate(real(self, *args, **kwargs)):
            if i == 3:
                raise RuntimeError("a bug")
            yield result

    monkeypatch.setattr(classifier.Classifier, "iter_predict", buggy)
    out = tmp_path / "rows.parquet"
    with pytest.raises(RuntimeError, match="a bug"):  # a bug keeps its traceback
        infer([str(folder), "--model", str(model), "-o", str(out), "-q"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rows.parquet.lock", "easy"]  # no .tmp, no rows.parquet
    Lock(out).release()  # not held any more


def test_a_file_that_is_no_picture_is_told_from_a_damaged_one(tmp_path: Path):
    from runtime.preprocess import NotAnImageError, opened

    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(NotAnImageError), opened(tmp_path / "notes.jpg"):
        pass
    with pytest.raises(ImageError) as damaged, opened(io.BytesIO(tiff_with_float_offset(tmp_path / "evil.tif").read_bytes())):
        pass
    assert not isinstance(damaged.value, NotAnImageError)
