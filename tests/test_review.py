"""Review on the audit page: choices made with the mouse and the keyboard in headless Chromium,
kept across a reload, downloaded as corrections.csv and applied by `simpsons manifest`, which
must change exactly what was chosen; and label_issues.csv passed as it is. The model's ranking
is made up here (the page takes any): no training."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline import synth
from pipeline.audit import page as audit
from pipeline.cli import main
from pipeline.engine import manifest as engine
from tests.conftest import ARTEFACTS, REPO

CONFLICT_A = "simpsons_dataset/agnes_skinner/pic_0003.jpg"  # copied, byte for byte, into barney_gumble
CONFLICT_B = "simpsons_dataset/barney_gumble/copied_from_agnes.jpg"
NEAR = "simpsons_dataset/barney_gumble/reencoded_from_agnes.jpg"


def run(*args) -> "CliRunner.Result":
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory) -> dict:
    """A generated set with planted conflicts and leaks, its manifest, and an audit page with a
    made-up ranking: three val frames "look like" another class, one test image is "misclassified"."""
    base = tmp_path_factory.mktemp("review")
    data, out = base / "data", base / "out"
    synth.write_dataset(data, classes=4, per_class=16, test_per_class=3, seed=2, size=(96, 72))
    shutil.copy(data / CONFLICT_A, data / CONFLICT_B)
    buffer = io.BytesIO()
    Image.open(data / "simpsons_dataset" / "agnes_skinner" / "pic_0005.jpg").save(buffer, format="JPEG", quality=60)
    (data / NEAR).write_bytes(buffer.getvalue())
    assert run("manifest", data, "--out", out, "--no-plots").exit_code == 0
    manifest = engine.read(out / engine.MANIFEST)
    classes = manifest.classes
    val = manifest.rows("val").sort("path").head(3)
    issues = val.select("path", "split", "label").with_columns(
        pl.col("label").map_elements(lambda c: classes[(classes.index(c) + 1) % len(classes)], return_dtype=pl.String).alias("suggested"),
        pl.lit(0.9).alias("suggested_probability"), pl.Series("label_quality", [0.01, 0.02, 0.03]))
    test = manifest.rows("test").row(0, named=True)
    wrong = classes[(classes.index(test["label"]) + 2) % len(classes)]
    misclassified = [(test["path"], test["label"], [(wrong, 0.7), (test["label"], 0.2), (classes[0], 0.1)])]
    page = audit.publish(out, manifest, (issues, misclassified))
    return {"data": data, "out": out, "page": page, "before": manifest.table, "issues": issues, "test": test["path"]}


def review_items(page: Path) -> list[tuple[str, str, str]]:
    """(section, path, suggestion) of each item under review, in the page's order."""
    text = page.read_text()
    out = []
    for section in re.findall(r'<section id="([^"]+)".*?</section>', text, flags=re.S):
        body = text.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
        out += [(section, html.unescape(p), html.unescape(s)) for p, s in
                re.findall(r'<figure data-path="([^"]*)"[^>]*class="review"[^>]*data-suggested="([^"]*)"', body)]
    return out


def test_the_review_sections_offer_what_to_accept(reviewed):
    items = review_items(reviewed["page"])
    assert {s for s, _, _ in items} == {"leaks", "label-conflicts", "label-issues", "misclassified"}
    offered = {(s, p): suggestion for s, p, suggestion in items}
    for p, suggested in reviewed["issues"].select("path", "suggested").iter_rows():
        assert offered["label-issues", p] == suggested
    assert offered["label-conflicts", CONFLICT_B] == "agnes_skinner" and offered["label-conflicts", CONFLICT_A] == "barney_gumble"
    leaked = reviewed["before"].filter(pl.col("status") == "leak").row(0, named=True)
    assert offered["leaks", leaked["path"]] == ""  # its test image carries its own label: nothing to accept


def test_choices_with_mouse_and_keys_survive_a_reload_and_change_the_manifest_exactly(browser, reviewed, tmp_path: Path):
    items, before = review_items(reviewed["page"]), reviewed["before"]
    issues = reviewed["issues"]["path"].to_list()
    suggested = dict(zip(issues, reviewed["issues"]["suggested"]))
    leaked = before.filter(pl.col("status") == "leak")["path"][0]
    order = [p for _, p, _ in items]
    by_key = order.index(issues[1])  # reached with n, accepted with a; the next one excluded with x
    assert order[by_key + 1] == issues[2]

    def at(section: str, path: str, control: str) -> str:
        return f'section#{section} figure[data-path="{path}"] {control}'

    steps = [
        {"click": at("label-issues", issues[0], 'button[data-action="accept"]')},
        {"select": at("label-conflicts", CONFLICT_B, "select.relabel"), "value": "agnes_skinner"},
        {"click": at("leaks", leaked, 'button[data-action="exclude"]')},
        {"click": at("misclassified", reviewed["test"], 'button[data-action="keep"]')},
        {"reload": True},
        *[{"key": "n"}] * (by_key + 1), {"key": "a"}, {"key": "n"}, {"key": "x"},
        {"download": str(tmp_path / "corrections.csv")},
    ]
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    done = subprocess.run(["node", str(REPO / "web" / "test" / "review.mjs"), reviewed["page"].as_uri(), str(tmp_path / "steps.json"),
                           str(tmp_path / "report.json"), str(tmp_path / "review.png")], cwd=REPO / "web", capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["errors"] == [] and report["requests"] == []
    assert report["focused"][: by_key + 1] == order[: by_key + 1] and report["focused"][-2] == issues[2]
    chosen = {issues[0]: ("relabel", suggested[issues[0]]), CONFLICT_B: ("relabel", "agnes_skinner"), leaked: ("exclude", None),
              reviewed["test"]: ("keep", None), issues[1]: ("relabel", suggested[issues[1]]), issues[2]: ("exclude", None)}
    shown = {(i["path"], i["choice"]) for i in report["items"]}
    assert {(p, action) for p, (action, _) in chosen.items()} <= shown
    assert report["count"] == "6 decision(s): 3 relabel, 2 exclude, 1 keep"

    corrections = pl.read_csv(tmp_path / "corrections.csv", infer_schema=False)
    assert corrections.columns == ["path", "action", "label", "note", "hash"] and corrections["path"].to_list() == sorted(chosen)
    assert dict(zip(corrections["path"], corrections["hash"])) == dict(before.filter(pl.col("path").is_in(list(chosen))).select("path", "hash").iter_rows())
    result = run("manifest", reviewed["data"], "--out", tmp_path / "after", "--no-plots", "--corrections", tmp_path / "corrections.csv")
    assert result.exit_code == 0, result.output
    after = engine.read(tmp_path / "after" / engine.MANIFEST).table
    decided = after.filter(pl.col("review").is_not_null())
    assert dict(zip(decided["path"], decided["review"])) == {p: action for p, (action, _) in chosen.items()}
    for p, (action, label) in chosen.items():
        row, old = after.filter(pl.col("path") == p).row(0, named=True), before.filter(pl.col("path") == p).row(0, named=True)
        assert row["label"] == (label or old["label"]) and row["original_label"] == old["label"]
        assert (row["status"] == "excluded_by_review") == (action == "exclude")
    untouched = after.filter(pl.col("review").is_null()).join(before.select("path", pl.col("label").alias("was")), on="path")
    assert untouched.height == before.height - len(chosen) and untouched.filter(pl.col("label").ne_missing(pl.col("was"))).is_empty()
    assert set(after.filter("corrected")["path"]) == {p for p, (action, _) in chosen.items() if action != "keep"}
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "review.png", ARTEFACTS / "audit-review.png")


def test_label_issues_csv_passes_as_it_is(reviewed, tmp_path: Path):
    """Mark one line of label_issues.csv "relabel" (its label already holds the suggestion) and
    another "exclude", as in a spreadsheet: the file is a corrections file."""
    issues = pl.read_csv(reviewed["out"] / audit.ISSUES, infer_schema=False)
    assert issues.columns[:5] == ["path", "action", "label", "note", "hash"] and issues["action"].null_count() == issues.height
    assert issues["label"].to_list() == issues["suggested"].to_list() == reviewed["issues"]["suggested"].to_list()
    edited = issues.with_columns(pl.Series("action", ["relabel", "exclude", None]))
    edited.write_csv(tmp_path / "label_issues.csv")
    result = run("manifest", reviewed["data"], "--out", tmp_path / "out", "--no-plots", "--corrections", tmp_path / "label_issues.csv")
    assert result.exit_code == 0, result.output
    after = engine.read(tmp_path / "out" / engine.MANIFEST).table.filter(pl.col("review").is_not_null()).sort("path")
    assert after.select("path", "review", "label", "status").rows() == [
        (issues["path"][0], "relabel", issues["suggested"][0], "ok"), (issues["path"][1], "exclude", issues["current_label"][1], "excluded_by_review")]
