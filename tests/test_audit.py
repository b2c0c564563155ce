"""The audit page: built from a generated data set with planted problems, rendered in headless
Chromium, each section checked to list exactly what was planted, every thumbnail decoded."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.engine import manifest as engine
from pipeline import synth
from pipeline.cli import main as simpsons
from runtime.classifier import Classifier
from tests.conftest import ARTEFACTS, REPO, easy_dataset

CONFLICT_A = "simpsons_dataset/agnes_skinner/pic_0003.jpg"  # copied, byte for byte, into barney_gumble
CONFLICT_B = "simpsons_dataset/barney_gumble/copied_from_agnes.jpg"
NEAR_CONFLICT = "simpsons_dataset/barney_gumble/reencoded_from_agnes.jpg"  # the same frame re-encoded: near-identical


def run(*args) -> "CliRunner.Result":
    return CliRunner().invoke(simpsons, [str(a) for a in args])


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("audit")
    data = base / "data"
    synth.write_dataset(data, classes=4, per_class=16, test_per_class=3, seed=2, size=(96, 72))  # plants dup, leaks, corrupt, txt
    shutil.copy(data / CONFLICT_A, data / CONFLICT_B)
    frame = Image.open(data / "simpsons_dataset" / "agnes_skinner" / "pic_0005.jpg")
    buffer = io.BytesIO()
    frame.save(buffer, format="JPEG", quality=60)
    (data / NEAR_CONFLICT).write_bytes(buffer.getvalue())
    (data / "simpsons_dataset" / "barney_gumble" / "empty.jpg").write_bytes(b"")
    assert run("manifest", data, "--out", base / "out", "--no-plots").exit_code == 0
    (data / "simpsons_dataset" / "abraham_grampa_simpson" / "pic_0016.jpg").unlink()  # the planted copy vanishes after the manifest
    result = run("audit", base / "out")
    assert result.exit_code == 0, result.output
    df = engine.read(base / "out" / engine.MANIFEST).table
    return {"base": base, "page": base / "out" / "audit.html", "manifest": df, "output": result.output}


def test_the_page_is_one_file_that_says_what_is_missing(audited):
    page = audited["page"].read_text()
    assert "<link" not in page and "src=" not in page.replace('src="data:', "") and "<script src" not in page  # self-contained
    assert audited["page"].stat().st_size < 25 * 2**20
    assert "1 file(s) listed in the manifest are gone" in audited["output"]  # the vanished copy: a placeholder and a note
    vanished = page.split('data-path="simpsons_dataset/abraham_grampa_simpson/pic_0016.jpg"')[1][:600]
    assert "data:image/svg+xml" in vanished


def test_each_section_lists_exactly_the_planted_items_in_a_browser(browser, audited, tmp_path: Path):
    report_path, shot = tmp_path / "audit.json", tmp_path / "audit.png"
    done = subprocess.run(["node", str(REPO / "web" / "test" / "audit.mjs"), audited["page"].as_uri(), str(report_path), str(shot)],
                          cwd=REPO / "web", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(report_path.read_text())
    sections, df = report["sections"], audited["manifest"]
    assert report["undecoded"] == [] and report["images"] > 40 and report["requests"] == []

    assert set(sections["exact-duplicates"]) == {"simpsons_dataset/abraham_grampa_simpson/pic_0000.jpg",
                                                 "simpsons_dataset/abraham_grampa_simpson/pic_0016.jpg"}
    leaked = set(df.filter(pl.col("leak"))["path"])
    tests_with_leaks = set(df.filter((pl.col("source") == "test") & pl.col("group").is_in(df.filter(pl.col("leak"))["group"].implode()))["path"])
    assert len(tests_with_leaks) == 4 and set(sections["leaks"]) == leaked | tests_with_leaks  # one downscaled copy per class
    assert {CONFLICT_A, CONFLICT_B, NEAR_CONFLICT} <= set(sections["label-conflicts"])
    mixed = df.filter(pl.col("group").is_not_null()).group_by("group").agg(pl.col("label").n_unique()).filter(pl.col("label") > 1)["group"]
    expected_conflicts = set(df.filter(pl.col("group").is_in(mixed.implode()) | (pl.col("status") == "label_conflict"))["path"])
    assert set(sections["label-conflicts"]) == expected_conflicts
    assert set(sections["bad-files"]) == {"simpsons_dataset/abraham_grampa_simpson/pic_0017.jpg",
                                          "simpsons_dataset/abraham_grampa_simpson/notes.txt",
                                          "simpsons_dataset/barney_gumble/empty.jpg"}
    assert len(sections["classes"]) >= 4 * 8  # a strip of examples per class
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTEFACTS / "audit-page.png")


def test_label_issues_rank_a_flipped_label_first(pipeline_run, tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(pipeline_run["data"], data)
    # Confident learning counts a picture as another class's only where the model is at least as sure
    # of it as of that class's pictures on average: the flip is a new abraham picture the model is surest of.
    candidates = sorted((easy_dataset(tmp_path / "candidates", per_class=12, test_per_class=0, seed=7)
                         / "simpsons_dataset" / "abraham_grampa_simpson").glob("*.jpg"))
    sureness = [p.confidence for p in Classifier(pipeline_run["onnx"], device="cpu").predict(candidates)]
    shutil.copy(candidates[sureness.index(max(sureness))], data / "kaggle_simpson_testset" / "agnes_skinner_91.jpg")
    assert run("manifest", data, "--out", tmp_path / "out", "--no-plots").exit_code == 0
    result = run("audit", tmp_path / "out", "--checkpoint", pipeline_run["run"] / "best.pt", "--workers", "0")
    assert result.exit_code == 0, result.output
    issues = pl.read_csv(tmp_path / "out" / "label_issues.csv")
    assert issues["path"][0] == "kaggle_simpson_testset/agnes_skinner_91.jpg"
    assert issues["suggested"][0] == "abraham_grampa_simpson" and issues["rank"][0] == 1
    page = (tmp_path / "out" / "audit.html").read_text()
    assert 'id="label-issues"' in page and 'id="misclassified"' in page and "agnes_skinner_91.jpg" in page


def test_bad_input_is_one_line(pipeline_run, tmp_path: Path):
    import torch

    result = run("audit", tmp_path)
    assert result.exit_code == 2 and "not found" in result.output and result.output.count("\n") == 1
    ckpt = torch.load(pipeline_run["run"] / "best.pt", weights_only=True)
    other = tmp_path / "other.pt"
    torch.save({**ckpt, "classes": ["a", "b", "c"]}, other)
    result = run("audit", pipeline_run["manifest"].parent, "--checkpoint", other)
    assert result.exit_code == 2 and "differ from the manifest" in result.output and result.output.count("\n") == 1
    assert run("audit", pipeline_run["manifest"].parent, "--folds", "2").exit_code == 2
