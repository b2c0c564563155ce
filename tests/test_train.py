"""Training and evaluation on tiny generated images (32 px, resnet18, a few steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from pipeline.training import train as trainer
from tests.conftest import TINY, invoke


def test_loss_falls_and_checkpoint_loads_as_documented(pipeline_run):
    history = json.loads((pipeline_run["run"] / "history.json").read_text())
    assert len(history) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert max(h["val_accuracy"] for h in history) > 0.5  # 3 classes: chance is 1/3
    ckpt = torch.load(pipeline_run["run"] / "best.pt", weights_only=True)
    assert {"state_dict", "arch", "classes", "mean", "std", "image_size", "resize_size", "interpolation",
            "format_version", "calibration"} <= set(ckpt)
    model = getattr(torchvision.models, ckpt["arch"])(num_classes=len(ckpt["classes"]))
    model.load_state_dict(ckpt["state_dict"])
    config = json.loads((pipeline_run["run"] / "config.json").read_text())
    assert config["arch"] == "resnet18" and len(config["manifest_hash"]) == 16
    assert list((pipeline_run["run"]).glob("events.out.tfevents.*"))
    from pipeline.training.calibration import TEMPERATURE_RANGE

    # this easy val split is classified without an error: the temperature comes from its test-style copies
    # (their NLL's minimum, or where they too are all right, the rule of succession), not the search's bound
    temperature = ckpt["calibration"]["temperature"]
    assert TEMPERATURE_RANGE[0] * 1.01 < temperature < TEMPERATURE_RANGE[1] / 1.01, ckpt["calibration"]["fit"]


def interrupted_in_second_epoch(monkeypatch, *args):
    """``simpsons train ARGS`` with Ctrl-C arriving as the second epoch starts."""
    real, calls = trainer.train_one_epoch, []

    def crash_on_second_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "train_one_epoch", crash_on_second_epoch)
        return invoke("train", *args)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(pipeline_run, tmp_path: Path, monkeypatch):
    args = ["--manifest", pipeline_run["manifest"], *TINY, "--epochs", "2"]
    assert invoke("train", *args, "--out", tmp_path / "full").exit_code == 0

    result = interrupted_in_second_epoch(monkeypatch, *args, "--out", tmp_path / "cut")
    assert result.exit_code == 130  # Ctrl-C
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 0
    assert invoke("train", "--resume", tmp_path / "cut").exit_code == 0

    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert full["epoch"] == cut["epoch"] == 1
    for name, tensor in full["state_dict"].items():
        torch.testing.assert_close(cut["state_dict"][name], tensor, rtol=0, atol=0, msg=name)


def test_local_weights_and_head_only_stage(pipeline_run, tmp_path: Path):
    """--weights PATH starts from a local file; --freeze-epochs trains the head alone."""
    source = pipeline_run["run"] / "best.pt"
    result = invoke("train", "--manifest", pipeline_run["manifest"], "--out", tmp_path / "run", *TINY,
                    "--weights", source, "--freeze-epochs", "1", "--epochs", "1")
    assert result.exit_code == 0, result.output
    before = torch.load(source, weights_only=True)["state_dict"]
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state_dict"]
    torch.testing.assert_close(after["conv1.weight"], before["conv1.weight"], rtol=0, atol=0)
    assert not torch.equal(after["fc.weight"], before["fc.weight"])


def test_evaluate_writes_the_report_and_lists_absent_classes(pipeline_run, tmp_path: Path):
    import polars as pl

    manifest = pl.read_parquet(pipeline_run["manifest"])
    # drop one class from the test split: it must be listed as absent, not averaged as zero
    dropped = manifest.with_columns(
        pl.when((pl.col("split") == "test") & (pl.col("label") == "agnes_skinner")).then(pl.lit("excluded")).otherwise(pl.col("split")).alias("split")
    )
    edited = tmp_path / "data" / "manifest.parquet"
    edited.parent.mkdir()
    dropped.write_parquet(edited)
    (edited.parent / "stats.json").write_text((pipeline_run["manifest"].parent / "stats.json").read_text())
    out = tmp_path / "eval"
    result = invoke("evaluate", "--checkpoint", pipeline_run["run"] / "best.pt", "--manifest", edited, "--out", out, "--tta", "--workers", "0")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["absent_classes"] == ["agnes_skinner"]
    assert set(report["per_class"]) == {"abraham_grampa_simpson", "apu_nahasapeemapetilon"}
    assert "| **macro avg** |" in (out / "report.md").read_text()
    for name in ("confusion.png", "predictions.png"):
        assert (out / name).stat().st_size > 1000
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + report["num_samples"]


def test_offline_imagenet_weights_give_one_clear_line(pipeline_run, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached download

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    result = invoke("train", "--manifest", pipeline_run["manifest"], "--out", tmp_path / "run",
                    "--arch", "resnet18", "--weights", "imagenet", "--epochs", "1")
    assert result.exit_code == 2
    assert "could not download ImageNet weights" in result.output and "--weights none" in result.output
    assert result.output.count("\n") == 2  # the start line, then the error


@pytest.mark.slow
def test_two_process_ddp_on_cpu(pipeline_run, tmp_path: Path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "pipeline.cli", "train", "--manifest", str(pipeline_run["manifest"]), "--out", str(out),
               *TINY, "--epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 0
    assert done.stderr.count("epoch 1:") == 1  # rank 0 alone reports and writes


def test_bad_manifest_and_checkpoint_give_one_clear_line(pipeline_run, tmp_path: Path):
    text = tmp_path / "manifest.parquet"
    text.write_text("not parquet")
    cases = [
        (("train", "--manifest", text, "--out", tmp_path / "run"), "not a manifest"),
        (("train", "--manifest", tmp_path / "missing.parquet"), "manifest not found"),
        (("evaluate", "--checkpoint", pipeline_run["manifest"], "--manifest", pipeline_run["manifest"]), "cannot load checkpoint"),
        (("evaluate", "--checkpoint", pipeline_run["run"] / "best.pt", "--manifest", text), "not a manifest"),
        (("train", "--resume", tmp_path), "nothing to resume"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and result.output.count("\n") == 1, result.output


def test_checkpoint_round_trips_and_old_checkpoints_load(pipeline_run, tmp_path: Path):
    from pipeline.training.checkpoint import Calibration, Checkpoint

    ckpt = Checkpoint.load(pipeline_run["run"] / "best.pt")
    ckpt.save(tmp_path / "copy.pt")
    again = Checkpoint.load(tmp_path / "copy.pt")
    assert again.preprocessing == ckpt.preprocessing and again.classes == ckpt.classes
    assert again.calibration.temperature == ckpt.calibration.temperature
    torch.testing.assert_close(again.calibration.centroids, ckpt.calibration.centroids)
    torch.testing.assert_close(again.calibration.prototypes, ckpt.calibration.prototypes)
    torch.testing.assert_close(again.calibration.projection, ckpt.calibration.projection)
    assert again.calibration.standardise == ckpt.calibration.standardise is not None
    old = {k: v for k, v in torch.load(pipeline_run["run"] / "best.pt", weights_only=True).items()
           if k not in ("format_version", "interpolation", "calibration", "resize_size")}
    torch.save(old, tmp_path / "v1.pt")
    v1 = Checkpoint.load(tmp_path / "v1.pt")
    assert v1.calibration == Calibration() and v1.preprocessing.resize_size == v1.preprocessing.image_size


def test_temperature_scaling_lowers_nll_of_an_overconfident_model():
    from pipeline.training.calibration import fit_report, fit_temperature

    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 5, (600,), generator=g)
    logits = torch.randn(600, 5, generator=g)
    correct = torch.rand(600, generator=g) < 0.7
    logits[correct, targets[correct]] += 2.0  # 70%-ish accurate...
    logits *= 6.0  # ...but sure of itself
    temperature = fit_temperature(logits, targets)
    fit = fit_report(logits, targets, temperature)
    assert temperature > 2.0
    assert fit["nll_after"] < 0.7 * fit["nll_before"] and fit["ece_after"] < 0.5 * fit["ece_before"]
    assert fit_temperature(logits / temperature, targets) == pytest.approx(1.0, abs=0.01)


def test_a_flawless_val_split_takes_its_temperature_from_the_images_given():
    from pipeline.training.calibration import calibrate, fit_temperature

    g = torch.Generator().manual_seed(0)
    targets = torch.arange(40) % 4
    logits = torch.randn(40, 4, generator=g)
    logits[torch.arange(40), targets] += 8.0  # every image right: the NLL falls as T shrinks
    copies = logits.clone()
    copies[:10] = copies[:10].roll(1, dims=1)  # a quarter wrong, as sure as ever
    features = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    calibration, _ = calibrate(logits, features, targets, features, targets, 4, "energy", 0.95, temperature_on=(copies, targets))
    assert calibration.temperature == pytest.approx(fit_temperature(copies, targets)) and calibration.temperature > 1.0
    assert calibration.fit["temperature_on"] == "val copies" and calibration.fit["temperature_by"] == "nll"
    # the copies right too: as sure as 40 right answers and none wrong allow, no surer
    t = fit_temperature(logits, targets)
    assert 0.05 * 1.01 < t < 20 / 1.01 and torch.softmax(logits / t, 1).amax(1).mean() == pytest.approx(41 / 42, abs=1e-4)


def test_threshold_accepts_the_requested_share_or_is_withheld():
    import numpy as np

    from pipeline.training.calibration import with_threshold
    from pipeline.training.checkpoint import Calibration
    from runtime.openset import auroc

    known = np.random.default_rng(0).normal(size=500)
    for accept in (0.5, 0.9, 0.95, 0.99):
        cal, warnings = with_threshold(Calibration(), known, accept)
        accepted = (known <= cal.ood_threshold).mean()
        assert not warnings and accept <= accepted < accept + 1 / len(known) + 1e-9
    cal, warnings = with_threshold(Calibration(), known[:30], 0.95)
    assert cal.ood_threshold is None and "too few" in warnings[0]
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0 and auroc(np.ones(3), np.ones(4)) == 0.5


def test_energy_prototype_flags_features_far_from_every_training_picture():
    """The shipped score: a picture the head is as sure of, but whose features lie away from every
    training picture, scores as less known; val scores are standardised around zero."""
    import torch.nn.functional as F

    from pipeline.training.calibration import calibrate, prototype_space
    from pipeline.training.checkpoint import DEFAULT_SCORE
    from pipeline.training.network import SCORE_RULES, ScoreConstants

    g = torch.Generator().manual_seed(0)
    centres = torch.eye(16)[:3]  # three classes along three axes; unknowns in the other thirteen
    train_targets = torch.arange(3).repeat_interleave(100)
    train = centres[train_targets] + 0.1 * torch.randn(300, 16, generator=g)
    val_targets = torch.arange(3).repeat(20)
    val = F.normalize(centres[val_targets] + 0.1 * torch.randn(60, 16, generator=g), dim=1)
    val_logits = 5 * F.one_hot(val_targets, 3).float() + torch.randn(60, 3, generator=g)

    projection, protos = prototype_space(train, train_targets, 3, per_class=8, dims=4)
    assert projection.shape == (17, 4) and protos.shape == (24, 4) and torch.allclose(protos.norm(dim=1), torch.ones(24))
    assert torch.equal(protos, prototype_space(train, train_targets, 3, per_class=8, dims=4)[1])  # deterministic
    assert prototype_space(train[:5], train_targets[:5], 3, per_class=8)[1].shape == (5, 4)  # few images: kept, fewer axes

    cal, _ = calibrate(val_logits, val, val_targets, train, train_targets, 3, "energy_prototype", 0.95)
    assert DEFAULT_SCORE == "energy_prototype" and cal.prototypes is not None
    k = ScoreConstants(cal, 3, 16)
    rule = SCORE_RULES["energy_prototype"]
    assert abs(float(rule(val_logits, val, k).mean())) < 1e-4
    far = F.normalize(torch.randn(20, 16, generator=g) * (torch.arange(16) >= 3), dim=1)
    sure = val_logits[:20]
    assert (rule(sure, far, k) > rule(sure, val[:20], k) + 1).all()


def test_calibrate_refits_a_finished_run_and_refuses_other_folders(pipeline_run, tmp_path: Path):
    import shutil

    from pipeline.engine.manifest import read
    from pipeline.engine.schema import Split
    from pipeline.training.calibration import PROTOTYPES_PER_CLASS
    from pipeline.training.checkpoint import DEFAULT_SCORE, Calibration, Checkpoint
    from pipeline.training.train import CENTROID_IMAGES_PER_CLASS

    run = tmp_path / "run"
    shutil.copytree(pipeline_run["run"], run)
    ckpt = Checkpoint.load(run / "best.pt")
    ckpt.calibration = Calibration(ood_score="max_logit", centroids=torch.zeros(3, 7))  # as a version with other features left it
    ckpt.save(run / "best.pt")
    result = invoke("evaluate", "--checkpoint", run / "best.pt", "--manifest", pipeline_run["manifest"], "--out", tmp_path / "eval")
    assert result.exit_code == 2 and "fitted on 7 features" in result.output and "simpsons calibrate" in result.output
    assert result.output.count("\n") == 1
    result = invoke("calibrate", run, "--device", "cpu")
    assert result.exit_code == 0, result.output
    cal = Checkpoint.load(run / "best.pt").calibration
    assert cal.ood_score == DEFAULT_SCORE and cal.temperature != 1.0
    train = read(pipeline_run["manifest"]).rows(Split.TRAIN)["label"].value_counts()["count"].to_list()
    # each class's training images and their third-size copies, as at most PROTOTYPES_PER_CLASS centres
    assert len(cal.prototypes) == sum(min(PROTOTYPES_PER_CLASS, 2 * min(n, CENTROID_IMAGES_PER_CLASS)) for n in train)
    result = invoke("calibrate", tmp_path / "nothing")
    assert result.exit_code == 2 and "not a finished run" in result.output and result.output.count("\n") == 1


def test_resume_refuses_a_changed_manifest(pipeline_run, tmp_path: Path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(pipeline_run["manifest"].parent, data)
    assert invoke("train", "--manifest", data / "manifest.parquet", "--out", tmp_path / "run", *TINY, "--epochs", "2").exit_code == 0
    (data / "manifest.parquet").write_bytes(pipeline_run["manifest"].read_bytes() + b"\0")
    result = invoke("train", "--resume", tmp_path / "run")
    assert result.exit_code == 2 and "has changed since this run started" in result.output


def test_evaluate_reports_calibration_and_the_unknown_verdict(pipeline_run, tmp_path: Path):
    from pipeline.training.checkpoint import DEFAULT_SCORE, Checkpoint
    from pipeline.synth import write_unknown

    unknown = tmp_path / "unknown"
    write_unknown(unknown, 42, 12, size=(32, 24))
    ckpt = Checkpoint.load(pipeline_run["run"] / "best.pt")
    assert ckpt.calibration.ood_threshold is None  # 27 val images: too few for 95%, so plant one
    ckpt.calibration.ood_threshold = 0.5
    ckpt.save(tmp_path / "best.pt")
    out = tmp_path / "eval"
    result = invoke("evaluate", "--checkpoint", tmp_path / "best.pt", "--manifest", pipeline_run["manifest"],
                    "--out", out, "--unknown", unknown, "--workers", "0")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    cal = report["calibration"]
    assert cal["temperature"] > 0 and 0 <= cal["ece_after"] <= 1 and cal["nll_after"] >= 0
    scores = report["unknown"]["scores"]
    assert set(scores) == {"msp", "max_logit", "energy", "cosine", "energy_prototype"} and report["unknown"]["shipped"] == DEFAULT_SCORE
    assert all(0 <= s["auroc"] <= 1 and s["unknown_images"] == 12 for s in scores.values())
    shipped, other = scores[DEFAULT_SCORE], scores["max_logit"]
    assert shipped["threshold"] == 0.5 and "unknown_rejected" in shipped and other["threshold"] is None  # applied to the shipped score
    assert "Unknown verdict: 12 images" in (out / "report.md").read_text()
    assert (out / "reliability.png").stat().st_size > 1000
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("evaluate", "--checkpoint", pipeline_run["run"] / "best.pt", "--manifest", pipeline_run["manifest"],
                    "--out", out, "--unknown", empty)
    assert result.exit_code == 2 and "no image files found" in result.output and result.output.count("\n") == 1


def test_train_option_defaults_are_the_config_defaults():
    """TrainConfig is the one source of training defaults: the CLI shows exactly its values."""
    from dataclasses import MISSING, fields

    from pipeline.cli import train
    from pipeline.training.config import TrainConfig

    options = {p.name: p.default for p in train.params if p.name not in ("resume_dir",)}
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    assert {k: v for k, v in options.items() if k in defaults} == defaults
    assert set(options) == {f.name for f in fields(TrainConfig)}  # every field is an option, and only those


def test_a_config_with_unknown_or_missing_keys_is_refused(pipeline_run, tmp_path: Path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pipeline_run["run"], run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "learning_rate": 0.1}))
    result = invoke("train", "--resume", run)
    assert result.exit_code == 2 and "unknown keys learning_rate" in result.output
    del config["epochs"]
    (run / "config.json").write_text(json.dumps(config))
    result = invoke("train", "--resume", run)
    assert result.exit_code == 2 and "lacks epochs" in result.output


def test_balance_loss_trains_and_validates(pipeline_run, tmp_path: Path):
    """Class weights in the loss: training on the device, validation loss on the CPU logits
    (on CUDA the two differ; `make gpu-check` runs this on a GPU)."""
    result = invoke("train", "--manifest", pipeline_run["manifest"], "--out", tmp_path / "run", *TINY, "--epochs", "1", "--balance", "loss")
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[0]["val_loss"] == history[0]["val_loss"]  # a number, not NaN


def test_augmentation_draws_from_per_sample_generators(pipeline_run):
    """The same (index, seed) gives the same sample whatever happened before, and reading a
    sample leaves the global random generators untouched."""
    import random


    from pipeline.engine.manifest import read as read_manifest
    from pipeline.training import datasets as data
    from pipeline.training.presets import TrainPreset
    from runtime.metadata import Preprocessing

    manifest = read_manifest(pipeline_run["manifest"])
    pre = Preprocessing.for_size(32, manifest.mean, manifest.std)
    dataset = data.ManifestDataset(manifest.rows("train"), manifest.data_root(), manifest.classes, TrainPreset(pre))
    random.seed(1)
    torch.manual_seed(1)
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    first, _ = dataset[(0, 1234, None)]
    assert random.getstate() == python_state and torch.equal(torch.get_rng_state(), torch_state)
    dataset[(1, 99, None)]
    random.random()
    again, _ = dataset[(0, 1234, None)]
    other, _ = dataset[(0, 4321, None)]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (3, 32, 32) and dataset[(0, 1234, 24)][0].shape == (3, 24, 24)  # the epoch's size (progressive)


def test_a_bug_keeps_its_traceback_and_debug_shows_all(pipeline_run, monkeypatch):
    from pipeline.training import evaluate as evaluation

    def broken(*args, **kwargs):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(evaluation, "fit_report", broken)
    result = invoke("evaluate", "--checkpoint", pipeline_run["run"] / "best.pt", "--manifest", pipeline_run["manifest"])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)  # not turned into one line
    monkeypatch.undo()
    monkeypatch.setenv("SIMPSONS_DEBUG", "1")
    result = invoke("evaluate", "--checkpoint", pipeline_run["manifest"], "--manifest", pipeline_run["manifest"])
    from pipeline.training.checkpoint import CheckpointError

    assert isinstance(result.exception, CheckpointError)  # the user error, with its traceback


RECIPE = ("--ema", "0.9", "--augment", "trivial", "--mixup", "0.2", "--cutmix", "1.0", "--mix-epochs", "2", "--random-erase", "0.25",
          "--progressive", "0.5", "--eval-scale", "1.25", "--average", "2")


def test_every_recipe_option_runs_and_is_recorded(pipeline_run, tmp_path: Path):
    result = invoke("train", "--manifest", pipeline_run["manifest"], "--out", tmp_path / "run", *TINY, "--epochs", "3", *RECIPE)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {k: config[k] for k in ("ema", "augment", "mixup", "cutmix", "mix_epochs", "random_erase", "progressive",
                                   "eval_scale", "average")} == {
        "ema": 0.9, "augment": "trivial", "mixup": 0.2, "cutmix": 1.0, "mix_epochs": 2, "random_erase": 0.25,
        "progressive": 0.5, "eval_scale": 1.25, "average": 2}
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["train_size"] for h in history] == [16, 32, 32]  # progressive: half size first, full by two thirds
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["image_size"] == 40  # evaluated (and exported) at 32 x 1.25
    assert "average of epochs" in result.output


def test_resume_keeps_the_recipe_state(pipeline_run, tmp_path: Path, monkeypatch):
    """EMA weights, the mixing schedule and the epochs kept for averaging survive an interruption."""
    args = ["--manifest", pipeline_run["manifest"], *TINY, "--epochs", "3", *RECIPE]
    assert invoke("train", *args, "--out", tmp_path / "full").exit_code == 0
    assert interrupted_in_second_epoch(monkeypatch, *args, "--out", tmp_path / "cut").exit_code == 130
    assert invoke("train", "--resume", tmp_path / "cut").exit_code == 0
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for name, tensor in full["training"]["ema"].items():
        torch.testing.assert_close(cut["training"]["ema"][name], tensor, rtol=0, atol=0, msg=name)
    assert cut["training"]["best_epochs"] == full["training"]["best_epochs"]
    best_full = torch.load(tmp_path / "full" / "best.pt", weights_only=True)["state_dict"]
    best_cut = torch.load(tmp_path / "cut" / "best.pt", weights_only=True)["state_dict"]
    for name, tensor in best_full.items():
        torch.testing.assert_close(best_cut[name], tensor, rtol=0, atol=0, msg=name)


def test_auto_options_follow_the_start_point(pipeline_run, tmp_path: Path):
    from pipeline.training.config import RECIPES

    for weights, recipe in (("none", "scratch"), (str(pipeline_run["run"] / "best.pt"), "pretrained")):
        out = tmp_path / recipe
        assert invoke("train", "--manifest", pipeline_run["manifest"], "--out", out, *TINY, "--weights", weights, "--epochs", "1",
                      "--lr", "0.004").exit_code == 0
        config = json.loads((out / "config.json").read_text())
        expected = {**RECIPES[recipe], "lr": 0.004, "batch_size": 16}  # what was given wins
        assert {k: config[k] for k in expected} == expected


@pytest.mark.parametrize("args, message", [
    (("--mixup", "0.2", "--mix-epochs", "5"), "--mix-epochs 5 must be between 1 and --epochs (2)"),
    (("--mix-epochs", "1"), "--mix-epochs needs --mixup or --cutmix"),
    (("--ema", "1.5"), "--ema is a decay in (0, 1)"),
    (("--progressive", "0"), "--progressive is a share"),
    (("--average", "3"), "--average 3 must be between 1 and --epochs (2)"),
    (("--augment", "everything"), "Invalid value for '--augment'"),
    (("--image-size", "1000", "--eval-scale", "1.25"), "--image-size x --eval-scale must stay between 16 and 1024 pixels"),
])
def test_nonsensical_recipes_are_refused_before_any_work(pipeline_run, tmp_path: Path, args, message):
    result = invoke("train", "--manifest", pipeline_run["manifest"], "--out", tmp_path / "run", *TINY, "--epochs", "2", *args)
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "run").exists()


def test_a_training_batch_of_one_image_is_dropped_not_an_error():
    from torch.utils.data import TensorDataset

    from pipeline.training.datasets import EpochSampler, loader

    class Indexed(TensorDataset):  # the sampler hands out (index, seed, size)
        def __getitem__(self, item):
            return super().__getitem__(item[0])

    for n, batches in ((17, [16]), (18, [16, 2]), (16, [16])):
        sampler = EpochSampler([0] * n, 1, balanced=False, seed=0)
        assert [len(x) for (x,) in loader(Indexed(torch.zeros(n, 1)), 16, 0, sampler)] == batches
    assert [len(x) for (x,) in loader(TensorDataset(torch.zeros(17, 1)), 16, 0)] == [16, 1]  # evaluation sees every image

