"""``simpsons audit``: one self-contained HTML page of what the data engine decided, and with a
model, which labels look wrong; and the place to decide what to do about it.

Pure functions turn the manifest into sections (lists of paths with their facts); the shell
reads thumbnails, renders one HTML file with everything inline (styles, JPEG thumbnails as data
URIs, the review script: no server, no network) and writes ``label_issues.csv``. Sections are
capped, with counts of what is not shown, so the page stays small for the full data set.

Review: each item of the leaks, label conflicts, likely mislabelled and misclassified sections
gets controls (accept the suggested class, pick another, exclude, keep; keys too), and the page
writes the choices as ``corrections.csv`` for ``simpsons manifest --corrections``
(pipeline/engine/corrections.py). The choices live in the browser's local storage, keyed by the
data root, and start from the decisions the manifest already holds: every download holds the
whole review so far, which is what the next manifest needs (it starts from the files each time).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.engine.schema import ACTIONS, PICTURES, Review, Split, Status, on_disk
from pipeline.engine import corrections, manifest as manifest_io
from pipeline.engine.manifest import Manifest
from pipeline.writers import atomic_write
from runtime.writers import FORMULA_STARTS, spreadsheet_safe

log = logging.getLogger("simpsons.audit")
PAGE = "audit.html"
ISSUES = "label_issues.csv"
CAP = 40  # items per section shown
STRIP = 8  # random examples per class
THUMB = 96  # thumbnail size, px
SCRIPT = (Path(__file__).parent / "review.js").read_text(encoding="utf-8")  # the page's review controls, inlined
MISSING = ("data:image/svg+xml;base64," + base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" fill="#eee"/>'
    b'<text x="48" y="52" font-size="11" text-anchor="middle" fill="#999">missing</text></svg>').decode())


@dataclass
class Item:
    """One picture on the page, with the lines written under it."""

    path: str
    caption: list[str] = field(default_factory=list)
    thumbnail: bool = True
    suggested: str | None = None  # the class a reviewer's "accept" files it under


@dataclass
class Block:
    """A titled row of items (one group, one class, one duplicate set)."""

    title: str
    items: list[Item]


@dataclass
class Section:
    id: str
    title: str
    explanation: str
    blocks: list[Block] = field(default_factory=list)
    hidden: int = 0  # how many blocks or items the cap left out
    table: str = ""  # an optional HTML table before the blocks
    review: bool = False  # its items get the review controls


# ----- sections: manifest table -> Section (pure) -----

def totals(df: pl.DataFrame, stats: dict) -> Section:
    counts = (df.group_by("label", "split").len().pivot(on="split", index="label", values="len").fill_null(0)
              .filter(pl.col("label").is_not_null()).sort("label"))
    splits = [s for s in Split if s in counts.columns]
    biggest = max(1, int(counts.select(pl.sum_horizontal(splits)).max().item()))
    rows = []
    for row in counts.iter_rows(named=True):
        bars = "".join(f'<span class="bar {s}" style="width:{100 * row[s] / biggest:.1f}%"></span>' for s in splits)
        rows.append(f"<tr><td>{html.escape(row['label'])}</td>" + "".join(f"<td>{row[s]}</td>" for s in splits) +
                    f'<td class="bars">{bars}</td></tr>')
    head = "".join(f"<th>{s}</th>" for s in splits)
    t = stats["totals"]
    table = (f'<p class="totals">{len(df)} files: train {t["train"]}, val {t["val"]}, test {t["test"]}, excluded {t["excluded"]} '
             f'({", ".join(f"{k} {v}" for k, v in stats["status"].items() if k != "ok") or "none"}); '
             f'{len(stats["classes"])} classes</p><table class="counts"><tr><th>class</th>{head}<th></th></tr>{"".join(rows)}</table>')
    return Section("totals", "Totals and classes", "How many files each class has in each split; excluded files are "
                   "duplicates, leaks, conflicts and bad files (their sections below say which).", table=table)


def exact_duplicates(df: pl.DataFrame) -> Section:
    copies = df.filter(pl.col("duplicate_of").is_not_null()).group_by("duplicate_of").agg(pl.col("path").sort()).sort("duplicate_of")
    blocks = [Block(f"{len(paths) + 1} identical files", [Item(kept, ["kept"])] + [Item(p, ["excluded: duplicate"]) for p in paths])
              for kept, paths in copies.iter_rows()]
    return Section("exact-duplicates", "Exact duplicates", "Files with the same bytes: one is kept (a test copy before "
                   "a training one), the others are excluded.", blocks[:CAP], max(0, len(blocks) - CAP))


def suggestions(labels: list[str | None]) -> list[str | None]:
    """For each member of a group of near-identical frames, the label most of the others carry
    (a tie: the first by name), or None where that is its own: what "accept" offers there."""
    counts = Counter(label for label in labels if label is not None)
    out = []
    for own in labels:
        others = counts - Counter([own])
        best = min(others.items(), key=lambda kv: (-kv[1], kv[0]))[0] if others else None
        out.append(best if best != own else None)
    return out


def group_items(rows: list[tuple[str, str | None, list[str]]]) -> list[Item]:
    """(path, label, caption) of a group's members -> its items, each with its suggestion."""
    return [Item(p, caption, suggested=s) for (p, _, caption), s in zip(rows, suggestions([label for _, label, _ in rows]))]


def leaks(df: pl.DataFrame) -> Section:
    touched = df.filter(pl.col("leak")).select("group").unique()
    groups = df.join(touched, on="group").sort("group", "path")
    blocks = []
    for (group,), members in groups.group_by("group", maintain_order=True):
        tests = [(p, label, ["test image", label or "no label"]) for p, label in
                 members.filter(pl.col("source") == "test").select("path", "label").iter_rows()]
        excluded = [(p, label, [f"{'kept: --keep-leaks' if s == 'ok' else 'excluded: leak'}", label])
                    for p, s, label in members.filter(pl.col("leak")).select("path", "status", "label").iter_rows()]
        blocks.append(Block(f"{len(tests)} test image(s), {len(excluded)} training frame(s) near-identical to them",
                            group_items(tests + excluded)))
    blocks.sort(key=lambda b: -len(b.items))
    return Section("leaks", "Leaks into the test set", "Training frames whose near-duplicate group holds a test image: "
                   "excluded from training so the test score is not a memory test. With --keep-leaks they are kept "
                   "(and marked), as in published, leaky numbers.", blocks[:CAP], max(0, len(blocks) - CAP), review=True)


def label_conflicts(df: pl.DataFrame) -> Section:
    """Near-duplicate groups whose members carry two or more labels, largest first, and files
    with the same bytes under two labels."""
    mixed = (df.filter(pl.col("group").is_not_null() & pl.col("label").is_not_null())
             .group_by("group").agg(pl.col("label").n_unique().alias("labels"), pl.len().alias("size"))
             .filter(pl.col("labels") > 1).sort(["size", "group"], descending=[True, False]))
    blocks = []
    for group, labels, size in mixed.iter_rows():
        members = df.filter(pl.col("group") == group).sort("label", "path")
        blocks.append(Block(f"{size} near-identical frames under {labels} labels",
                            group_items([(p, label, [label, s]) for p, label, s in members.select("path", "label", "status").iter_rows()])))
    same = df.filter(pl.col("status") == Status.LABEL_CONFLICT).sort("hash", "label")
    for _, members in same.group_by("hash", maintain_order=True):
        blocks.append(Block("the same bytes under two labels", group_items(
            [(p, label, [label, Status.LABEL_CONFLICT.value]) for p, label in members.select("path", "label").iter_rows()])))
    return Section("label-conflicts", "Label conflicts", "Near-identical frames filed under different characters: a "
                   "wrong label, or a frame showing two characters. Identical files under two labels are excluded.",
                   blocks[:CAP], max(0, len(blocks) - CAP), review=True)


def bad_files(df: pl.DataFrame, stats: dict) -> Section:
    bad = [p for p in stats["problems"] if p["status"] != Status.LABEL_CONFLICT]
    items = [Item(p["path"], [p["status"], p["reason"] or ""], thumbnail=False) for p in bad]
    return Section("bad-files", "Bad files", "Every file the engine could not use, with the reason.",
                   [Block(f"{len(items)} file(s)", items[: CAP * 5])] if items else [], max(0, len(items) - CAP * 5))


def classes(df: pl.DataFrame, seed: int = 0) -> Section:
    """Per class: size and aspect-ratio outliers (more than 3 MADs from the class's median of
    log area or log aspect) and a seeded strip of random examples."""
    usable = df.filter(pl.col("status").is_in(PICTURES) & (pl.col("source") == "train") & pl.col("width").is_not_null())
    usable = usable.with_columns((pl.col("width") * pl.col("height")).log().alias("_area"),
                                 (pl.col("width") / pl.col("height")).log().alias("_aspect"))
    rng, blocks = random.Random(seed), []
    for (label,), rows in usable.sort("label", "path").group_by("label", maintain_order=True):
        outliers = []
        for column, name in (("_area", "size"), ("_aspect", "aspect ratio")):
            values = rows[column].to_numpy()
            median, mad = np.median(values), np.median(np.abs(values - np.median(values))) or 1e-9
            far = np.abs(values - median) / mad > 3 * 1.4826
            outliers += [Item(p, [f"{name} outlier", f"{w}x{h}"]) for p, w, h, f in
                         zip(rows["path"], rows["width"], rows["height"], far) if f]
        examples = [Item(p, [f"{w}x{h}"]) for p, w, h in rng.sample(list(rows.select("path", "width", "height").iter_rows()),
                                                                 min(STRIP, len(rows)))]
        blocks.append(Block(f"{label}: {len(rows)} frames; {len(outliers)} outlier(s)", outliers[:STRIP] + examples))
    return Section("classes", "Each class: outliers and examples", "Frames whose size or aspect ratio is far from their "
                   "class's (3 median absolute deviations), then random examples.", blocks)


def label_issues_section(issues: pl.DataFrame, misclassified: list[tuple[str, str, list]]) -> list[Section]:
    ranked = [Item(p, [f"filed as {label}", f"looks like {guess} ({p_guess:.0%})", f"{split}, quality {q:.3f}"], suggested=guess)
              for p, label, guess, p_guess, split, q in
              issues.select("path", "label", "suggested", "suggested_probability", "split", "label_quality").iter_rows()]
    wrong = [Item(p, [f"true {t}"] + [f"{label} {prob:.0%}" for label, prob in top], suggested=top[0][0]) for p, t, top in misclassified]
    return [
        Section("label-issues", "Likely mislabelled", "Ranked by cleanlab on out-of-sample probabilities (val and test "
                "predictions; training frames only with --folds): the lower the label quality, the likelier the label is wrong.",
                [Block(f"{len(ranked)} candidate(s), most likely first", ranked[:CAP])] if ranked else [], max(0, len(ranked) - CAP),
                review=True),
        Section("misclassified", "Misclassified test images", "Test images whose best class is not their label, with the top 3.",
                [Block(f"{len(wrong)} image(s)", wrong[:CAP])] if wrong else [], max(0, len(wrong) - CAP), review=True),
    ]


def sections(df: pl.DataFrame, stats: dict) -> list[Section]:
    return [totals(df, stats), exact_duplicates(df), leaks(df), label_conflicts(df), bad_files(df, stats), classes(df)]


# ----- the shell: thumbnails, HTML, files -----

def thumbnail(path: Path) -> str:
    """A small JPEG as a data URI, or the placeholder for a file that is gone or unreadable."""
    from runtime.preprocess import ImageError, load_image

    try:
        img = load_image(path, min_size=THUMB)
    except (ImageError, OSError):
        return MISSING
    img.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#ffd90f;padding:12px 24px;border-bottom:3px solid #1d1d1f}header h1{margin:0;font-size:20px}
nav{padding:6px 24px;background:#fff;border-bottom:1px solid #ddd;position:sticky;top:0;z-index:1}nav a{margin-right:14px;color:#1d1d1f}
main{padding:8px 24px 40px;max-width:1200px}section{margin:18px 0}h2{font-size:18px;margin:0 0 2px}
.why{color:#555;margin:0 0 8px}.blocks{display:flex;flex-wrap:wrap;gap:8px}
.block{background:#fff;border:1px solid #e3e3e8;border-radius:8px;padding:8px;max-width:100%}
.block h3{font-size:13px;margin:0 0 6px;color:#333}.items{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:104px;font-size:11px;color:#444}figure img{width:96px;height:96px;object-fit:contain;background:#eee;border-radius:4px}
figcaption{overflow-wrap:anywhere}figure.text{width:auto;max-width:520px}.more{color:#a33;font-style:italic}
table.counts{border-collapse:collapse;font-size:12px}table.counts td,table.counts th{padding:1px 8px;text-align:right}
table.counts td:first-child{text-align:left}.bars{width:300px;text-align:left!important}.bar{display:inline-block;height:9px}
.bar.train{background:#3b7dd8}.bar.val{background:#7cc46b}.bar.test{background:#f2a93b}.bar.excluded{background:#c0392b}
#review{margin-top:4px;font-size:12px}#review .keys{color:#666;margin-left:10px}
figure.review{width:136px;padding:3px;border-radius:6px;outline:none}figure.review:focus{box-shadow:0 0 0 3px #1d1d1f}
figure[data-choice=relabel]{background:#dbe8fb}figure[data-choice=exclude]{background:#f9dcd9}figure[data-choice=keep]{background:#e0f2da}
.controls{display:flex;flex-wrap:wrap;gap:2px;margin-top:3px}.controls button,.controls select{font-size:10px;padding:1px 3px;max-width:100%}
.controls .choice{flex-basis:100%;font-weight:bold;min-height:1em}
"""
REVIEW_BAR = ('<div id="review"><b>Review</b>: <span id="review-count">no decisions yet</span> '
              '<button id="download" type="button">Download corrections.csv</button>'
              '<span class="keys">keys: n / p next / previous item, a accept the suggestion, x exclude, k keep, u undo; '
              'then simpsons manifest DATA_ROOT --corrections corrections.csv</span></div>')


def review_data(df: pl.DataFrame, root: Path, classes: list[str], parts: list[Section]) -> dict:
    """What the review script needs: the classes to pick from, the label and content hash of
    each item under review (the hash goes into the file, so a picture that changes before the
    manifest is rebuilt is not corrected blindly), the decisions the manifest already holds
    (stale ones left out: they were about other pixels), and where to keep the choices."""
    shown = sorted({i.path for s in parts if s.review for b in s.blocks for i in b.items})
    facts = df.filter(pl.col("path").is_in(shown)).select("path", "label", "hash")
    earlier = df.filter(pl.col("review").is_in(ACTIONS)) if "review" in df.columns else df.clear()  # older manifests: none
    return {
        "key": f"simpsons-review:{root}", "classes": classes, "columns": corrections.COLUMNS, "formula": list(FORMULA_STARTS),
        "facts": {p: [label, h] for p, label, h in facts.iter_rows()},
        "earlier": [{"path": p, "action": a, "label": label if a == Review.RELABEL else "", "note": note or "", "hash": h}
                    for p, a, label, note, h in earlier.select("path", "review", "label", "review_note", "hash").iter_rows()],
    }


def render(title: str, parts: list[Section], thumbs: dict[str, str], review: dict) -> str:
    def figure(item: Item, reviewed: bool) -> str:
        caption = "<br>".join(html.escape(line) for line in [item.path.rsplit("/", 1)[-1], *item.caption])
        if not item.thumbnail:
            return f'<figure class="text" data-path="{html.escape(item.path)}"><figcaption><b>{html.escape(item.path)}</b>: ' \
                   f'{" - ".join(html.escape(c) for c in item.caption)}</figcaption></figure>'
        controls = (f' class="review" tabindex="0" data-suggested="{html.escape(item.suggested or "")}"' if reviewed else "")
        return (f'<figure data-path="{html.escape(item.path)}" title="{html.escape(item.path)}"{controls}>'
                f'<img alt="" src="{thumbs[item.path]}"><figcaption>{caption}</figcaption></figure>')

    body = []
    for s in parts:
        blocks = "".join(f'<div class="block"><h3>{html.escape(b.title)}</h3><div class="items">'
                         f'{"".join(figure(i, s.review) for i in b.items)}</div></div>' for b in s.blocks)
        blocks = f'<div class="blocks">{blocks}</div>' if blocks else ""
        empty = "" if s.blocks or s.table else '<p class="why">Nothing found.</p>'
        more = f'<p class="more">{s.hidden} more not shown (see manifest.parquet)</p>' if s.hidden else ""
        body.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2><p class="why">{html.escape(s.explanation)}</p>'
                    f'{s.table}{blocks}{empty}{more}</section>')
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in parts)
    data = json.dumps(review, ensure_ascii=False).replace("<", "\\u003c")  # nothing in it can close the script
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{STYLE}</style></head><body><header><h1>{html.escape(title)}</h1></header><nav>{nav}{REVIEW_BAR}</nav>'
            f'<main>{"".join(body)}</main><script type="application/json" id="review-data">{data}</script>'
            f'<script>{SCRIPT}</script></body></html>')


ISSUE_COLUMNS = [*corrections.COLUMNS, "rank", "split", "current_label", "suggested", "suggested_probability", "label_quality"]


def write_issues(path: Path, issues: pl.DataFrame) -> None:
    """``label_issues.csv``: the ranking, led by the corrections file's columns, ``label``
    filled with the suggestion and ``action`` empty: write ``relabel`` (or ``exclude``,
    ``keep``) on the lines you agree with and pass the file as it is to ``--corrections``."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(ISSUE_COLUMNS)
            for rank, (p, split, label, guess, p_guess, quality, h) in enumerate(issues.select(
                    "path", "split", "label", "suggested", "suggested_probability", "label_quality", "hash").iter_rows(), 1):
                cells = [p, "", guess, "", h, rank, split, label, guess, f"{p_guess:.5f}", f"{quality:.5f}"]
                out.writerow([spreadsheet_safe(c) for c in cells])  # names: never formulas

    atomic_write(path, write)


def run(out_dir: Path, checkpoint: Path | None = None, folds: int = 0, workers: int = 2, device: str = "auto") -> Path:
    """Write ``out_dir/audit.html`` (and with a checkpoint ``label_issues.csv``); returns the page."""
    manifest = manifest_io.read(out_dir / manifest_io.MANIFEST)
    found = None
    if checkpoint is not None:
        from pipeline.audit.label_issues import find

        found = find(manifest, checkpoint, folds, workers, device)
    return publish(out_dir, manifest, found)


def publish(out_dir: Path, manifest: Manifest, found: tuple[pl.DataFrame, list] | None = None) -> Path:
    """The page (and with a model's ``found`` label issues and misclassified test images,
    ``label_issues.csv``) from a manifest: everything but the model, so the page can be built
    from any ranking."""
    root = manifest.data_root()
    parts = sections(manifest.table, manifest.stats)
    if found is not None:
        issues, misclassified = found
        parts += label_issues_section(issues, misclassified)
        write_issues(out_dir / ISSUES, issues.join(manifest.table.select("path", "hash"), on="path", how="left", maintain_order="left"))
    shown = {item.path for s in parts for b in s.blocks for item in b.items if item.thumbnail}
    thumbs = {p: thumbnail(on_disk(root, p)) for p in sorted(shown)}
    gone = sum(uri == MISSING for uri in thumbs.values())
    if gone:
        log.warning("%d file(s) listed in the manifest are gone or unreadable: shown as placeholders", gone)
    page = render(f"Data audit: {root}", parts, thumbs, review_data(manifest.table, root, manifest.classes, parts))
    atomic_write(out_dir / PAGE, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out_dir / PAGE
