"""The deployable runtime: simpsons-infer and the Classifier API, on an exported tiny model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from runtime import Classifier, DeviceError, ModelError
from runtime.classifier import nvidia_driver
from runtime.cli import main as infer
from runtime.metadata import Preprocessing
from runtime.preprocess import preprocess


@pytest.fixture
def folder(pipeline_run, tmp_path: Path) -> Path:
    """Labelled test images plus the bad files careless users have."""
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted((pipeline_run["data"] / "kaggle_simpson_testset").glob("*.jpg")):
        (images / src.name).write_bytes(src.read_bytes())
    (images / "sub").mkdir()
    Image.open(images / "abraham_grampa_simpson_0.jpg").convert("RGBA").save(images / "sub" / "abraham_grampa_simpson_9.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (images / "text.jpg").write_text("not an image")
    (images / "notes.txt").write_text("skipped: no image extension")
    return images


def test_import_runtime_never_loads_torch_or_polars():
    code = (
        "import sys, runtime, runtime.cli, runtime.classifier, runtime.writers, runtime.metrics;"
        "heavy = {'torch', 'torchvision', 'polars', 'onnx'} & set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_preprocessing_matches_torchvision(tmp_path: Path, rng):
    import torch
    from torchvision import transforms as T

    from tests.conftest import frame

    pre = Preprocessing.for_size(40, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    path = tmp_path / "x.png"
    frame(rng, size=(77, 53)).save(path)
    reference = T.Compose([
        T.Resize(pre.resize_size, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(pre.image_size), T.ToTensor(), T.Normalize(pre.mean, pre.std),
    ])(Image.open(path).convert("RGB"))
    ours = torch.from_numpy(preprocess(path, pre))
    assert ours.shape == reference.shape == (3, 40, 40)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_cli_writes_every_format_with_error_rows(pipeline_run, folder: Path, tmp_path: Path, suffix: str, capsys):
    out = tmp_path / f"rows{suffix}"
    code = infer([str(folder), "--model", str(pipeline_run["onnx"]), "-o", str(out), "--top-k", "2", "--batch-size", "5"])
    assert code == 0
    if suffix == ".csv":
        rows = list(csv.DictReader(out.open()))
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    elif suffix == ".json":
        rows = json.loads(out.read_text())
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == 15 and "notes.txt" not in by_name  # 12 test images, 1 png, 2 bad
    assert by_name["broken.jpg"]["status"].startswith("cannot decode")
    assert by_name["text.jpg"]["status"].startswith("not an image")
    good = [r for r in rows if r["status"] == "ok"]
    assert len(good) == 13 and all(r["label"] for r in good)
    stderr = capsys.readouterr().err
    assert "2 failed" in stderr and "broken.jpg" in stderr


def test_cli_exit_codes_and_clean_errors(pipeline_run, folder: Path, tmp_path: Path, capsys):
    model = str(pipeline_run["onnx"])
    assert infer([str(folder), "--model", model, "-q", "--strict"]) == 1
    assert infer([str(folder / "text.jpg"), "--model", model, "-q"]) == 1  # every file failed
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("hello")
    foreign = tmp_path / "foreign.onnx"
    plain = onnx.load(model)
    del plain.metadata_props[:]
    onnx.save(plain, foreign)
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    for args, message in [
        ([str(folder), "--model", str(tmp_path / "missing.onnx")], "model file not found"),
        ([str(folder), "--model", str(not_onnx)], "not a loadable ONNX model"),
        ([str(folder), "--model", str(foreign)], "metadata lacks"),
        ([str(tmp_path / "nowhere"), "--model", model], "no such file or folder"),
        ([str(empty), "--model", model], "no image files found"),
        ([str(folder), "--model", model, "-o", str(tmp_path / "rows.xlsx")], "unknown output format"),
    ]:
        assert infer(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_evaluate_prints_accuracy_and_f1(pipeline_run, folder: Path, capsys):
    assert infer([str(folder), "--model", str(pipeline_run["onnx"]), "--evaluate", "-q"]) == 0
    out = capsys.readouterr().out
    assert "Evaluation on 13 labelled files" in out
    assert "**macro avg**" in out and "**accuracy**" in out


def test_csv_rows_are_on_disk_before_the_run_ends(tmp_path: Path):
    from runtime.writers import open_writer

    writer = open_writer(tmp_path / "rows.csv", top_k=1)
    writer.write({"path": "a.jpg", "status": "ok", "label": "gil", "confidence": 0.9, "top_labels": ["gil"], "top_probs": [0.9]})
    assert "a.jpg,ok,gil" in (tmp_path / "rows.csv").read_text()  # a killed run keeps this row
    writer.close()


def test_api_takes_paths_pil_images_and_arrays(pipeline_run, folder: Path):
    clf = Classifier(pipeline_run["onnx"], device="cpu")
    paths = sorted(folder.glob("*_[0-9].jpg"))[:4]
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    by_path, by_pil, by_array = (clf.predict(items, top_k=3) for items in (paths, pil, arrays))
    assert [p.label for p in by_path] == [p.label for p in by_pil] == [p.label for p in by_array]
    first = by_path[0]
    assert first.label in clf.classes and len(first.top_k) == 3
    assert first.top_k[0] == (first.label, first.confidence)
    assert sum(prob for _, prob in first.top_k) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="text.jpg"):
        clf.predict([folder / "text.jpg"])


def test_device_selection(pipeline_run):
    assert Classifier(pipeline_run["onnx"], device="auto").device in ("cpu", "cuda")
    assert Classifier(pipeline_run["onnx"], device="cpu").device == "cpu"
    if not nvidia_driver():
        assert Classifier(pipeline_run["onnx"], device="auto").device == "cpu"
        with pytest.raises(DeviceError, match="--device cuda"):
            Classifier(pipeline_run["onnx"], device="cuda")
    with pytest.raises(DeviceError):
        Classifier(pipeline_run["onnx"], device="tpu")
    with pytest.raises(ModelError):
        Classifier("missing.onnx")


def test_exif_orientation_alpha_and_modes_are_honoured(tmp_path: Path, rng):
    from runtime.preprocess import load_image
    from tests.conftest import frame

    upright = frame(rng, size=(40, 64))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera stores a portrait shot
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    stored.save(tmp_path / "rotated.png", exif=exif)
    assert np.array_equal(np.asarray(load_image(tmp_path / "rotated.png")), np.asarray(upright))
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert load_image(clear).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    for mode in ("L", "CMYK", "P", "I;16"):
        assert load_image(upright.convert(mode)).mode == "RGB"
