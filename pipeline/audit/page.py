"""``simpsons audit``: one self-contained HTML page of what the data engine decided, and with a
model, which labels look wrong.

Pure functions turn the manifest into sections (lists of paths with their facts); the shell
reads thumbnails, renders one HTML file with everything inline (styles, JPEG thumbnails as data
URIs: no server, no network) and writes ``label_issues.csv``. Sections are capped, with counts of
what is not shown, so the page stays small for the full data set.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.engine.schema import PICTURES, Split, Status, on_disk
from pipeline.engine import manifest as manifest_io
from pipeline.writers import atomic_write
from runtime.writers import spreadsheet_safe

log = logging.getLogger("simpsons.audit")
PAGE = "audit.html"
ISSUES = "label_issues.csv"
CAP = 40  # items per section shown
STRIP = 8  # random examples per class
THUMB = 96  # thumbnail size, px
MISSING = ("data:image/svg+xml;base64," + base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" fill="#eee"/>'
    b'<text x="48" y="52" font-size="11" text-anchor="middle" fill="#999">missing</text></svg>').decode())


@dataclass
class Item:
    """One picture on the page, with the lines written under it."""

    path: str
    caption: list[str] = field(default_factory=list)
    thumbnail: bool = True


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


def leaks(df: pl.DataFrame) -> Section:
    touched = df.filter(pl.col("leak")).select("group").unique()
    groups = df.join(touched, on="group").sort("group", "path")
    blocks = []
    for (group,), members in groups.group_by("group", maintain_order=True):
        tests = [Item(p, ["test image"]) for p in members.filter(pl.col("source") == "test")["path"]]
        excluded = [Item(p, [f"{'kept: --keep-leaks' if s == 'ok' else 'excluded: leak'}", label])
                    for p, s, label in members.filter(pl.col("leak")).select("path", "status", "label").iter_rows()]
        blocks.append(Block(f"{len(tests)} test image(s), {len(excluded)} training frame(s) near-identical to them", tests + excluded))
    blocks.sort(key=lambda b: -len(b.items))
    return Section("leaks", "Leaks into the test set", "Training frames whose near-duplicate group holds a test image: "
                   "excluded from training so the test score is not a memory test. With --keep-leaks they are kept "
                   "(and marked), as in published, leaky numbers.", blocks[:CAP], max(0, len(blocks) - CAP))


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
                            [Item(p, [label, s]) for p, label, s in members.select("path", "label", "status").iter_rows()]))
    same = df.filter(pl.col("status") == Status.LABEL_CONFLICT).sort("hash", "label")
    for _, members in same.group_by("hash", maintain_order=True):
        blocks.append(Block("the same bytes under two labels", [Item(p, [label, Status.LABEL_CONFLICT.value]) for p, label in
                                                                 members.select("path", "label").iter_rows()]))
    return Section("label-conflicts", "Label conflicts", "Near-identical frames filed under different characters: a "
                   "wrong label, or a frame showing two characters. Identical files under two labels are excluded.",
                   blocks[:CAP], max(0, len(blocks) - CAP))


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
    ranked = [Item(p, [f"filed as {label}", f"looks like {guess} ({p_guess:.0%})", f"{split}, quality {q:.3f}"])
              for p, label, guess, p_guess, split, q in
              issues.select("path", "label", "suggested", "suggested_probability", "split", "label_quality").iter_rows()]
    wrong = [Item(p, [f"true {t}"] + [f"{label} {prob:.0%}" for label, prob in top]) for p, t, top in misclassified]
    return [
        Section("label-issues", "Likely mislabelled", "Ranked by cleanlab on out-of-sample probabilities (val and test "
                "predictions; training frames only with --folds): the lower the label quality, the likelier the label is wrong.",
                [Block(f"{len(ranked)} candidate(s), most likely first", ranked[:CAP])] if ranked else [], max(0, len(ranked) - CAP)),
        Section("misclassified", "Misclassified test images", "Test images whose best class is not their label, with the top 3.",
                [Block(f"{len(wrong)} image(s)", wrong[:CAP])] if wrong else [], max(0, len(wrong) - CAP)),
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
nav{padding:6px 24px;background:#fff;border-bottom:1px solid #ddd;position:sticky;top:0}nav a{margin-right:14px;color:#1d1d1f}
main{padding:8px 24px 40px;max-width:1200px}section{margin:18px 0}h2{font-size:18px;margin:0 0 2px}
.why{color:#555;margin:0 0 8px}.blocks{display:flex;flex-wrap:wrap;gap:8px}
.block{background:#fff;border:1px solid #e3e3e8;border-radius:8px;padding:8px;max-width:100%}
.block h3{font-size:13px;margin:0 0 6px;color:#333}.items{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:104px;font-size:11px;color:#444}figure img{width:96px;height:96px;object-fit:contain;background:#eee;border-radius:4px}
figcaption{overflow-wrap:anywhere}figure.text{width:auto;max-width:520px}.more{color:#a33;font-style:italic}
table.counts{border-collapse:collapse;font-size:12px}table.counts td,table.counts th{padding:1px 8px;text-align:right}
table.counts td:first-child{text-align:left}.bars{width:300px;text-align:left!important}.bar{display:inline-block;height:9px}
.bar.train{background:#3b7dd8}.bar.val{background:#7cc46b}.bar.test{background:#f2a93b}.bar.excluded{background:#c0392b}
"""


def render(title: str, parts: list[Section], thumbs: dict[str, str]) -> str:
    def figure(item: Item) -> str:
        caption = "<br>".join(html.escape(line) for line in [item.path.rsplit("/", 1)[-1], *item.caption])
        if not item.thumbnail:
            return f'<figure class="text" data-path="{html.escape(item.path)}"><figcaption><b>{html.escape(item.path)}</b>: ' \
                   f'{" - ".join(html.escape(c) for c in item.caption)}</figcaption></figure>'
        return (f'<figure data-path="{html.escape(item.path)}" title="{html.escape(item.path)}">'
                f'<img alt="" src="{thumbs[item.path]}"><figcaption>{caption}</figcaption></figure>')

    body = []
    for s in parts:
        blocks = "".join(f'<div class="block"><h3>{html.escape(b.title)}</h3><div class="items">'
                         f'{"".join(figure(i) for i in b.items)}</div></div>' for b in s.blocks)
        blocks = f'<div class="blocks">{blocks}</div>' if blocks else ""
        empty = "" if s.blocks or s.table else '<p class="why">Nothing found.</p>'
        more = f'<p class="more">{s.hidden} more not shown (see manifest.parquet)</p>' if s.hidden else ""
        body.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2><p class="why">{html.escape(s.explanation)}</p>'
                    f'{s.table}{blocks}{empty}{more}</section>')
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in parts)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{STYLE}</style></head><body><header><h1>{html.escape(title)}</h1></header><nav>{nav}</nav>'
            f'<main>{"".join(body)}</main></body></html>')


def write_issues(path: Path, issues: pl.DataFrame) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["rank", "path", "split", "label", "suggested", "suggested_probability", "label_quality"])
            for rank, row in enumerate(issues.select("path", "split", "label", "suggested", "suggested_probability",
                                                     "label_quality").iter_rows(), 1):
                out.writerow([rank, *map(spreadsheet_safe, row[:5]), f"{row[5]:.5f}"])  # names: never formulas

    atomic_write(path, write)


def run(out_dir: Path, checkpoint: Path | None = None, folds: int = 0, workers: int = 2, device: str = "auto") -> Path:
    """Write ``out_dir/audit.html`` (and with a checkpoint ``label_issues.csv``); returns the page."""
    manifest = manifest_io.read(out_dir / manifest_io.MANIFEST)
    root = manifest.data_root()
    parts = sections(manifest.table, manifest.stats)
    if checkpoint is not None:
        from pipeline.audit.label_issues import find

        issues, misclassified = find(manifest, checkpoint, folds, workers, device)
        parts += label_issues_section(issues, misclassified)
        write_issues(out_dir / ISSUES, issues)
    shown = {item.path for s in parts for b in s.blocks for item in b.items if item.thumbnail}
    thumbs = {p: thumbnail(on_disk(root, p)) for p in sorted(shown)}
    gone = sum(uri == MISSING for uri in thumbs.values())
    if gone:
        log.warning("%d file(s) listed in the manifest are gone or unreadable: shown as placeholders", gone)
    page = render(f"Data audit: {root}", parts, thumbs)
    atomic_write(out_dir / PAGE, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out_dir / PAGE
