"""ONNX export: parity with PyTorch, metadata, batch sizes, int8, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pipeline.training.checkpoint import DEFAULT_SCORE
from runtime import Classifier
from runtime.metadata import FEATURES, INPUT_NAME, LOGITS, OOD_SCORE, PROBABILITIES, sha256, sidecar_path
from tests.conftest import invoke


def test_export_is_verified_against_pytorch(pipeline_run):
    report = json.loads(pipeline_run["onnx"].with_suffix(".report.json").read_text())
    check = report["verification"]
    assert check["top1_agreement"] == 1.0 and check["max_abs_logit_diff"] <= check["tolerance"]
    assert check["images"] > 0
    model = onnx.load(str(pipeline_run["onnx"]))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == [LOGITS, FEATURES, OOD_SCORE]
    assert check["max_abs_ood_score_diff"] <= check["tolerance"]
    assert model.opset_import[0].version >= 17


def test_metadata_and_sidecars_round_trip(pipeline_run):
    ckpt = torch.load(pipeline_run["run"] / "best.pt", weights_only=True)
    for path in (pipeline_run["onnx"], pipeline_run["int8"], pipeline_run["portable"]):
        info = Classifier(path, device="cpu").info
        assert list(info.classes) == ckpt["classes"]
        assert info.preprocessing.image_size == ckpt["image_size"] == 32
        np.testing.assert_allclose(info.preprocessing.mean, ckpt["mean"])
        np.testing.assert_allclose(info.preprocessing.std, ckpt["std"])
        assert info.arch == "resnet18" and info.config_hash == ckpt["config_hash"]
        assert info.temperature == pytest.approx(ckpt["calibration"]["temperature"]) and info.temperature != 1.0
        side = json.loads(sidecar_path(path).read_text())
        assert side["sha256"] == sha256(path) and side["classes"] == ckpt["classes"]
        assert side["ood_threshold"] == info.ood_threshold and side["variant"] == info.variant
        assert side["preprocessing"]["resize_size"] == info.preprocessing.resize_size
    props = {p.key: p.value for p in onnx.load(str(pipeline_run["onnx"])).metadata_props}
    assert "centre crop 32x32" in props["preprocessing_rule"]


def test_each_variant_gets_a_threshold_accepting_the_requested_share_of_val(pipeline_run):
    report = json.loads(pipeline_run["onnx"].with_suffix(".report.json").read_text())
    for name in ("fp32", "int8", "portable", "portable-int8"):
        variant = report["variants"][name]
        assert variant["accept_known"] == 0.8 and variant["val_known_accepted"] >= 0.8, (name, variant)  # ties may add more
    clf = Classifier(pipeline_run["onnx"], device="cpu")
    assert clf.threshold == report["variants"]["fp32"]["ood_threshold"] and clf.info.ood_score == DEFAULT_SCORE


def test_portable_model_needs_no_preprocessing_code(pipeline_run):
    import onnxruntime as ort
    from PIL import Image

    report = json.loads(pipeline_run["onnx"].with_suffix(".report.json").read_text())
    for name in ("portable", "portable-int8"):
        assert report["variants"][name]["top1_agreement_with_reference"] >= 0.995
    session = ort.InferenceSession(str(pipeline_run["portable"]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)" and session.get_outputs()[0].name == PROBABILITIES
    images = sorted((pipeline_run["data"] / "kaggle_simpson_testset").glob("*.jpg"))
    plain = Classifier(pipeline_run["onnx"], device="cpu").predict(images)
    for image, expected in zip(images, plain):
        pixels = np.asarray(Image.open(image).convert("RGB"))[None]  # any size, as decoded
        probs, ood, _ = session.run(None, {INPUT_NAME: pixels})
        assert probs.shape == (1, 3) and probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert abs(float(probs.max()) - expected.confidence) < 0.02


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch(pipeline_run, batch: int):
    from pipeline.training.checkpoint import load_model

    model, _ = load_model(pipeline_run["run"] / "best.pt")
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    got = Classifier(pipeline_run["onnx"], device="cpu").logits(x)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert got.shape == (batch, 3)
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_the_page_ships_int8_only_where_it_agrees_with_fp32(pipeline_run):
    from export.onnx_export import PORTABLE_AGREEMENT, web_model

    report = json.loads(pipeline_run["onnx"].with_suffix(".report.json").read_text())
    against_fp32 = report["variants"]["portable-int8"]["agreement_with_fp32"]
    assert against_fp32["clear_answers"] > 0
    assert report["web_model"] == web_model(report)
    variants = {"portable": {"file": "p.onnx"}, "portable-int8": {"file": "p.int8.onnx"}}
    for agreed, shipped in ((PORTABLE_AGREEMENT, "p.int8.onnx"), (PORTABLE_AGREEMENT - 0.001, "p.onnx")):
        variants["portable-int8"]["agreement_with_fp32"] = {"top1_agreement_on_clear_answers": agreed}
        assert web_model({"variants": variants}) == shipped


def test_int8_runs_and_agrees_with_fp32(pipeline_run):
    report = json.loads(pipeline_run["onnx"].with_suffix(".report.json").read_text())
    int8 = report["variants"]["int8"]
    assert int8["top1_agreement_with_reference"] >= 0.9 and int8["reference"] == "fp32"
    assert abs(int8["accuracy"] - report["variants"]["fp32"]["accuracy"]) <= 0.1
    ops = {n.op_type for n in onnx.load(str(pipeline_run["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    images = sorted((pipeline_run["data"] / "kaggle_simpson_testset").glob("*.jpg"))
    reference = Classifier(pipeline_run["onnx"], device="cpu")
    fp32, q = reference.predict(images), Classifier(pipeline_run["int8"], device="cpu").predict(images)
    assert np.mean([a.top_k[0][0] == b.top_k[0][0] for a, b in zip(fp32, q)]) >= 0.9
    # The score is a sum of two val z-scores: a picture within 1 of the threshold is a near-tie,
    # whose verdict quantisation may flip as it may a near-tie's class; every other verdict holds.
    clear = [(a.unknown, b.unknown) for a, b in zip(fp32, q) if abs(a.ood_score - reference.threshold) > 1.0]
    assert len(clear) >= len(images) / 2 and all(a == b for a, b in clear), clear


def test_fp16_variant(pipeline_run, tmp_path: Path):
    out = tmp_path / "m.onnx"
    result = invoke("export", "--checkpoint", pipeline_run["run"] / "best.pt", "--out", out, "--fp16", "--eval-images", "8")
    assert result.exit_code == 0, result.output
    assert "too few to choose an unknown threshold" in result.output  # 8 images: exported without one
    assert Classifier(out, device="cpu").threshold is None
    fp16 = Classifier(out.with_suffix(".fp16.onnx"), device="cpu")
    assert fp16.session.get_inputs()[0].type == "tensor(float)"  # callers keep feeding float32
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["variants"]["fp16"]["top1_agreement_with_reference"] >= 0.9


def test_bad_inputs_give_one_clear_line(pipeline_run, tmp_path: Path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02 not a checkpoint")
    ckpt = torch.load(pipeline_run["run"] / "best.pt", weights_only=True)
    unknown = tmp_path / "unknown.pt"
    torch.save({**ckpt, "arch": "resnet9000"}, unknown)
    nearest = tmp_path / "nearest.pt"
    torch.save({**ckpt, "interpolation": "nearest"}, nearest)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    good = pipeline_run["run"] / "best.pt"
    cases = [
        (tmp_path / "missing.pt", tmp_path / "m.onnx", (), "checkpoint not found"),
        (corrupt, tmp_path / "m.onnx", (), "cannot load checkpoint"),
        (unknown, tmp_path / "m.onnx", (), "resnet9000"),
        (good, blocker / "m.onnx", (), "cannot write there"),
        (nearest, tmp_path / "m.onnx", ("--portable",), "--portable: interpolation 'nearest'"),
        (good, tmp_path / "m.onnx", ("--accept-known", "1.5"), "0<x<1"),
    ]
    for checkpoint, out, extra, message in cases:
        result = invoke("export", "--checkpoint", checkpoint, "--out", out, *extra)
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1 and "Traceback" not in result.output


def test_a_near_tie_that_flips_is_reported_not_a_disagreement():
    import numpy as np

    from export.onnx_export import Scored, agreement

    classes = ["a", "b", "c"]

    def scored(rows):
        probs = np.array(rows, dtype=np.float32)
        return Scored([classes[i] for i in probs.argmax(1)], probs, None)

    reference = scored([[0.9, 0.05, 0.05], [0.48, 0.47, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    near_tie = scored([[0.9, 0.05, 0.05], [0.47, 0.48, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    report = agreement(near_tie, reference)
    assert report["top1_agreement_with_reference"] == 0.75
    assert report["top1_agreement_on_clear_answers"] == 1.0 and report["clear_answers"] == 3 and report["near_tie_flips"] == 1
    clear_flip = scored([[0.05, 0.9, 0.05], [0.48, 0.47, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    assert agreement(clear_flip, reference)["top1_agreement_on_clear_answers"] == 2 / 3
