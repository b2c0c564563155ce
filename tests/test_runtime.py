"""The deployable runtime: simpsons-infer and the Classifier API, on tiny models built
directly (tests/tiny_models.py), so nothing here depends on a training run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime import UNKNOWN, Classifier, DeviceError, ModelError
from runtime.classifier import nvidia_driver
from runtime.cli import main as infer
from runtime.metadata import Preprocessing, encode, sidecar_path
from runtime.preprocess import preprocess, square
from tests import tiny_models as tiny
from tests.conftest import EASY_CLASSES, easy_dataset


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Labelled colour images (<class>_<n>.jpg) plus the bad files careless users have."""
    root = easy_dataset(tmp_path_factory.mktemp("easy"), per_class=2, test_per_class=4)
    folder = root / "kaggle_simpson_testset"
    (folder / "sub").mkdir()
    Image.open(folder / "abraham_grampa_simpson_0.jpg").convert("RGBA").save(folder / "sub" / "abraham_grampa_simpson_9.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "text.jpg").write_text("not an image")
    (folder / "notes.txt").write_text("skipped: no image extension")
    return folder


@pytest.fixture(scope="module")
def greys(tmp_path_factory) -> Path:
    """Pictures with no dominant colour: like no class, so the tiny model's score rejects them."""
    folder = tmp_path_factory.mktemp("greys")
    for i in range(6):
        Image.new("RGB", (40, 30), (100 + 20 * i,) * 3).save(folder / f"grey_{i}.jpg")
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A plain model whose stored threshold accepts the colour images and rejects greys."""
    return tiny.plain(tmp_path_factory.mktemp("model") / "model.onnx", ood_threshold=-1.0, accept_known=0.95)


def test_import_runtime_never_loads_torch_or_polars():
    code = (
        "import sys, runtime, runtime.cli, runtime.classifier, runtime.writers, runtime.metrics, runtime.openset;"
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


def read_rows(out: Path) -> list[dict]:
    if out.suffix == ".csv":
        return list(csv.DictReader(out.open()))
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text().splitlines()]
    if out.suffix == ".json":
        return json.loads(out.read_text())
    import pyarrow.parquet as pq

    return pq.read_table(out).to_pylist()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_cli_writes_every_format_with_error_rows(model: Path, images: Path, tmp_path: Path, suffix: str, capsys):
    out = tmp_path / f"rows{suffix}"
    code = infer([str(images), "--model", str(model), "-o", str(out), "--top-k", "2", "--batch-size", "5"])
    assert code == 0
    rows = read_rows(out)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == 15 and "notes.txt" not in by_name  # 12 test images, 1 png, 2 bad
    assert by_name["broken.jpg"]["status"].startswith("cannot decode")
    assert by_name["text.jpg"]["status"].startswith("not an image")
    good = [r for r in rows if r["status"] == "ok"]
    assert len(good) == 13 and all(r["label"] in EASY_CLASSES for r in good)
    assert all(r["ood_score"] not in (None, "") and str(r["unknown"]) in ("False", "false", "0") for r in good)
    assert by_name["abraham_grampa_simpson_1.jpg"]["label"] == "abraham_grampa_simpson"
    stderr = capsys.readouterr().err
    assert "2 failed" in stderr and "0 unknown" in stderr and "broken.jpg" in stderr


def test_unknown_verdict_rows_api_and_overrides(model: Path, images: Path, greys: Path, capsys):
    clf = Classifier(model, device="cpu")
    grey = clf.predict(sorted(greys.glob("*.jpg")), top_k=3)
    red = clf.predict([images / "abraham_grampa_simpson_0.jpg"], top_k=3)[0]
    assert all(p.unknown and p.label == UNKNOWN for p in grey)
    assert all(p.top_k[0][0] in EASY_CLASSES and p.confidence == p.top_k[0][1] for p in grey)  # best class kept first
    assert not red.unknown and red.label == "abraham_grampa_simpson" and red.ood_score < clf.threshold
    assert all(p.ood_score > clf.threshold for p in grey)

    assert infer([str(greys), "--model", str(model)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count(UNKNOWN) == 6 and "6 unknown" in captured.err
    assert infer([str(greys), "--model", str(model), "--no-unknown"]) == 0
    assert UNKNOWN not in capsys.readouterr().out
    assert infer([str(greys), "--model", str(model), "--unknown-threshold", "100"]) == 0  # accepts everything
    assert UNKNOWN not in capsys.readouterr().out
    assert not Classifier(model, unknown=False).predict([greys / "grey_0.jpg"])[0].unknown


def test_temperature_from_the_metadata_softens_probabilities(tmp_path: Path, images: Path):
    image = images / "agnes_skinner_0.jpg"
    sharp = Classifier(tiny.plain(tmp_path / "t1.onnx")).predict([image])[0]
    soft = Classifier(tiny.plain(tmp_path / "t4.onnx", temperature=4.0)).predict([image])[0]
    assert sharp.label == soft.label == "agnes_skinner"
    assert 1 / 3 < soft.confidence < sharp.confidence


def test_a_model_exported_before_unknown_verdicts_still_works(tmp_path: Path, images: Path, capsys):
    old = tiny.info()
    props = {k: v for k, v in encode(old).items() if k not in ("temperature", "ood_score", "variant")}
    props["format_version"] = "1"
    path = tiny.save(tiny.network(outputs=("logits",)), tmp_path / "old.onnx", props)
    assert infer([str(images / "agnes_skinner_0.jpg"), "--model", str(path)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "no ood_score output" in warnings[0]
    assert "agnes_skinner" in captured.out and UNKNOWN not in captured.out
    no_threshold = tiny.plain(tmp_path / "no-threshold.onnx")
    assert infer([str(images / "agnes_skinner_0.jpg"), "--model", str(no_threshold)]) == 0
    assert "carries no unknown threshold" in capsys.readouterr().err


def test_open_set_evaluation(model: Path, images: Path, greys: Path, tmp_path: Path, capsys):
    assert infer([str(images), "--model", str(model), "--evaluate", "--unknown", str(greys), "-q"]) == 0
    out = capsys.readouterr().out
    assert "Evaluation on 13 labelled files" in out and "**macro avg**" in out
    assert "AUROC 1.000" in out and "100.0% of unknown rejected" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert infer([str(images), "--model", str(model), "--evaluate", "--unknown", str(empty)]) == 2
    assert "no image files found" in capsys.readouterr().err


def test_portable_model_runs_from_pixels_and_agrees(model: Path, images: Path, greys: Path, tmp_path: Path):
    from export.onnx_export import write_metadata
    from export.portable import make_portable

    portable = tmp_path / "model.portable.onnx"
    make_portable(model, portable, tiny.PRE, temperature=1.0)
    write_metadata(portable, tiny.info(variant="portable", ood_threshold=-1.0, accept_known=0.95))
    plain, pixels = Classifier(model), Classifier(portable)
    assert pixels.portable and not plain.portable
    files = sorted(images.glob("*_[0-9].jpg")) + sorted(greys.glob("*.jpg"))
    a, b = plain.predict(files, top_k=3), pixels.predict(files, top_k=3)
    assert [p.label for p in a] == [p.label for p in b]
    for p, q in zip(a, b):
        assert abs(p.confidence - q.confidence) < 0.02 and abs(p.ood_score - q.ood_score) < 0.05
    mixed = [np.zeros((20, 30, 3), np.uint8), np.full((31, 17, 3), 200, np.uint8), Image.open(files[0])]
    assert len(pixels.predict(mixed)) == 3  # different sizes in one call
    assert json.loads(sidecar_path(portable).read_text())["inputs"][0]["dtype"] == "uint8"


@pytest.mark.parametrize("size", [(96, 72), (72, 96), (61, 61), (150, 37), (17, 16)])
def test_the_portable_graph_preprocesses_as_the_python_runtime(size, rng):
    """The graph's resize, crop and normalisation against ``preprocess``, pixel for pixel (up to
    one 8-bit step where two roundings meet), landscape, portrait, square and odd sizes."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from export.portable import NETWORK_INPUT, preprocessing_nodes
    from tests.conftest import frame

    pre = Preprocessing.for_size(32, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    nodes, constants = preprocessing_nodes(pre)
    graph = helper.make_graph(nodes, "pre", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
                              [helper.make_tensor_value_info(NETWORK_INPUT, TensorProto.FLOAT, None)], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    img = frame(rng, size=size)
    (got,) = session.run(None, {"image": np.asarray(img)[None]})
    steps = (got[0] - preprocess(img, pre)) * (255 * np.asarray(pre.std, np.float32)).reshape(3, 1, 1)
    assert got.shape == (1, 3, 32, 32)
    assert np.abs(steps).max() <= 1.0 + 1e-3 and np.abs(steps).mean() < 0.05
    # what the Python runtime hands a portable model: on it the graph sees preprocess's very pixels
    (exact,) = session.run(None, {"image": square(img, pre)[None]})
    np.testing.assert_allclose(exact[0], preprocess(img, pre), atol=1e-5)


def test_sidecar_stands_in_for_missing_metadata_and_must_match(model: Path, images: Path, tmp_path: Path, capsys):
    import onnx

    from export.onnx_export import write_metadata

    stripped = tmp_path / "stripped.onnx"
    write_metadata(tiny.save(tiny.network(), stripped, None), tiny.info(ood_threshold=-1.0))
    bare = onnx.load(str(stripped))
    del bare.metadata_props[:]
    onnx.save(bare, str(stripped))  # as runtimes that drop metadata see it; the sidecar no longer matches
    image = str(images / "agnes_skinner_0.jpg")
    assert infer([image, "--model", str(stripped)]) == 2
    assert "sha256 differs" in capsys.readouterr().err
    sidecar = json.loads(sidecar_path(stripped).read_text())
    from runtime.metadata import sha256

    sidecar_path(stripped).write_text(json.dumps({**sidecar, "sha256": sha256(stripped)}))
    assert Classifier(stripped).info.ood_threshold == -1.0
    sidecar_path(stripped).unlink()
    assert infer([image, "--model", str(stripped)]) == 2
    assert "no metadata and no sidecar" in capsys.readouterr().err


def test_cli_exit_codes_and_clean_errors(model: Path, images: Path, tmp_path: Path, capsys):
    assert infer([str(images), "--model", str(model), "-q", "--strict"]) == 1
    assert infer([str(images / "text.jpg"), "--model", str(model), "-q"]) == 1  # every file failed
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    msp = tiny.plain(tmp_path / "msp.onnx", ood_score="msp")
    capsys.readouterr()
    for args, message in [
        ([str(images), "--model", str(tmp_path / "missing.onnx")], "model file not found"),
        ([str(images), "--model", str(not_onnx)], "not a loadable ONNX model"),
        ([str(tmp_path / "nowhere"), "--model", str(model)], "no such file or folder"),
        ([str(empty), "--model", str(model)], "no image files found"),
        ([str(images), "--model", str(model), "-o", str(tmp_path / "rows.xlsx")], "unknown output format"),
        ([str(images), "--model", str(model), "--unknown-threshold", "nan"], "finite number"),
        ([str(images), "--model", str(model), "--unknown-threshold", "abc"], "not a number"),
        ([str(images), "--model", str(msp), "--unknown-threshold", "1.5"], "outside the msp score's range"),
        ([str(images), "--model", str(model), "--unknown", str(images)], "needs --evaluate"),
    ]:
        assert infer(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.strip().count("\n") <= 1 and "Traceback" not in err, err


@pytest.mark.parametrize("build, message", [
    (lambda p: tiny.save(tiny.network(classes=1000), p, encode(tiny.info())), "1000 columns but the metadata names 3 classes"),
    (lambda p: tiny.save(tiny.network(classes=10), p, encode(tiny.info())), "10 columns"),
    (lambda p: tiny.save(tiny.network(input_shape=("N", 3, 224, 224)), p, encode(tiny.info())), "image_size 16"),
    (lambda p: tiny.save(tiny.network(input_name="pixels"), p, encode(tiny.info())), "one input named 'image'"),
    (lambda p: tiny.save(tiny.network(), p, {**encode(tiny.info()), "classes": '"homer"'}), "classes must be a non-empty JSON list"),
    (lambda p: tiny.save(tiny.network(), p, {**encode(tiny.info()), "preprocessing": json.dumps(
        {**json.loads(encode(tiny.info())["preprocessing"]), "interpolation": "lanczos9"})}), "interpolation 'lanczos9'"),
    (lambda p: tiny.save(tiny.network(), p, {k: v for k, v in encode(tiny.info()).items() if k != "classes"}), "metadata lacks classes"),
])
def test_a_model_that_contradicts_its_metadata_is_refused_at_load(tmp_path: Path, images: Path, capsys, build, message):
    path = build(tmp_path / "bad.onnx")
    assert infer([str(images / "agnes_skinner_0.jpg"), "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_csv_rows_are_on_disk_before_the_run_ends(tmp_path: Path):
    from runtime.writers import open_writer

    writer = open_writer(tmp_path / "rows.csv", top_k=1)
    writer.write({"path": "a.jpg", "status": "ok", "label": "gil", "confidence": 0.9, "ood_score": -3.0, "unknown": False,
                  "top_labels": ["gil"], "top_probs": [0.9]})
    assert "a.jpg,ok,gil,0.9,-3.0,False" in (tmp_path / "rows.csv").read_text()  # a killed run keeps this row
    writer.close()


def test_api_takes_paths_pil_images_and_arrays(model: Path, images: Path):
    clf = Classifier(model, device="cpu")
    paths = sorted(images.glob("*_[0-9].jpg"))[:4]
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    by_path, by_pil, by_array = (clf.predict(items, top_k=3) for items in (paths, pil, arrays))
    assert [p.label for p in by_path] == [p.label for p in by_pil] == [p.label for p in by_array]
    first = by_path[0]
    assert first.label in clf.classes and len(first.top_k) == 3
    assert first.top_k[0] == (first.label, first.confidence)
    assert sum(prob for _, prob in first.top_k) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="text.jpg"):
        clf.predict([images / "text.jpg"])
    with pytest.raises(ValueError, match="uint8"):
        clf.predict([np.zeros((4, 4, 3), np.float32)])


def test_device_selection(model: Path):
    assert Classifier(model, device="cpu").device == "cpu"
    if nvidia_driver():
        assert Classifier(model, device="auto").device == "cuda"
    else:
        assert Classifier(model, device="auto").device == "cpu"
        with pytest.raises(DeviceError, match="--device cuda"):
            Classifier(model, device="cuda")
    with pytest.raises(DeviceError):
        Classifier(model, device="tpu")
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
