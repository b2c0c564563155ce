"""``simpsons-infer``: classify image files and folders with an exported ONNX model.

Exit codes: 0 done (files that failed have error rows); 1 every file failed, or some failed
under ``--strict``; 2 usage error, nothing to classify, unusable model or device.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runtime.labels import is_image_name, label_from_path
from runtime.logs import to_stderr
from runtime.progress import progress

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


class UsageError(Exception):
    """A bad command line, reported as one line (argparse would print the whole usage)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see simpsons-infer --help)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = Parser(
        prog="simpsons-infer",
        description="Classify Simpsons character images with an exported ONNX model.",
        epilog="Exit codes: 0 done, 1 all files failed (or any, with --strict), 2 usage/model/device error.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="image files and folders")
    parser.add_argument("--model", "-m", type=Path, required=True, help="model.onnx (or model.portable.onnx) from `simpsons export`")
    parser.add_argument("--output", "-o", type=Path, help="rows to .csv, .jsonl, .json or .parquet (default: a table on stdout)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime and decoding threads (default: all cores)")
    parser.add_argument("--no-recursive", dest="recursive", action="store_false", help="only the top level of each folder")
    parser.add_argument("--unknown-threshold", type=finite_float, default=None, metavar="X",
                        help="label an image 'unknown' when its ood_score is above X (default: the threshold stored in the model)")
    parser.add_argument("--no-unknown", action="store_true", help="never answer 'unknown': every image gets its best class")
    parser.add_argument("--evaluate", action="store_true", help="labels from class folders or <class>_<n> names: print accuracy and F1")
    parser.add_argument("--unknown", dest="unknown_dir", type=Path, default=None, metavar="DIR",
                        help="with --evaluate: images of characters outside the classes; print how well the unknown verdict separates them")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any file fails")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.top_k < 1:
        parser.error("--batch-size and --top-k must be at least 1")
    if args.unknown_dir is not None and not args.evaluate:
        parser.error("--unknown DIR needs --evaluate (it measures the unknown verdict against labelled files)")
    if args.no_unknown and args.unknown_threshold is not None:
        parser.error("--no-unknown and --unknown-threshold exclude each other")
    return args


def find_images(paths: Sequence[Path], recursive: bool) -> tuple[list[Path], int]:
    """Files named on the command line are taken as they are; folders contribute their files
    with an image extension, sorted. Returns the files and how many others were skipped."""
    files, skipped = [], 0
    for path in paths:
        if path.is_file():
            files.append(path)
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such file or folder")
        found = sorted(p for p in (path.rglob("*") if recursive else path.iterdir()) if p.is_file())
        images = [p for p in found if is_image_name(p)]
        files.extend(images)
        skipped += len(found) - len(images)
    return files, skipped


def rows(results) -> Iterator[dict]:
    """The prediction rows every output format shares (the API's ``Prediction`` fields)."""
    for r in results:
        p = r.prediction
        yield {
            "path": str(r.source),
            "status": "ok" if p else r.error,
            "label": p.label if p else None,
            "confidence": p.confidence if p else None,
            "ood_score": p.ood_score if p else None,
            "unknown": p.unknown if p else None,
            "top_labels": [lab for lab, _ in p.top_k] if p else [],
            "top_probs": [prob for _, prob in p.top_k] if p else [],
        }


@dataclass
class Tally:
    """What a run keeps of its rows: counts, failures and, for --evaluate, (path, best class,
    ood_score) of each labelled-looking file; never the rows themselves, so memory stays flat."""

    counts: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    scored: list[tuple[str, str, float | None]] = field(default_factory=list)
    unknown: int = 0

    def add(self, row: dict, keep_scores: bool) -> None:
        if row["label"] is None:
            self.failures.append((row["path"], row["status"]))
            return
        self.counts[row["label"]] += 1
        self.unknown += bool(row["unknown"])
        if keep_scores:
            self.scored.append((row["path"], row["top_labels"][0], row["ood_score"]))


def print_evaluation(scored: list[tuple[str, str, float | None]], classes: Sequence[str]) -> list[float | None]:
    """Accuracy and per-class F1 of the best class, for the files whose path carries a label;
    returns those files' ood scores (the known side of an open-set evaluation)."""
    from runtime.metrics import classification_report, report_table

    labelled = [(label_from_path(path, classes), best, ood) for path, best, ood in scored]
    labelled = [row for row in labelled if row[0] is not None]
    if not labelled:
        print("--evaluate: no file carries a known label (class folder or <class>_<n> name)", file=sys.stderr)
        return []
    report = classification_report([t for t, _, _ in labelled], [p for _, p, _ in labelled], classes)
    print(f"\nEvaluation on {len(labelled)} labelled files ({len(scored) - len(labelled)} unlabelled skipped); "
          "best class, whatever the unknown verdict")
    print(report_table(report))
    return [ood for _, _, ood in labelled]


def print_openset(clf, known: list[float | None], unknown_files: Iterable[Path], batch_size: int) -> None:
    """How the ood score separates the labelled files from images of other characters."""
    import numpy as np

    from runtime.openset import openset_report

    results = list(clf.iter_predict(unknown_files, batch_size=batch_size))
    unknown = [r.prediction.ood_score for r in results if r.prediction]
    if not known or not unknown or None in known or None in unknown:
        print("--unknown: needs labelled known files, decodable unknown images and a model with an ood_score output", file=sys.stderr)
        return
    report = openset_report(np.array(known), np.array(unknown), clf.threshold)
    print(f"\nUnknown verdict ({clf.info.ood_score} score): {report['known_images']} known vs {report['unknown_images']} unknown images; "
          f"AUROC {report['auroc']:.3f}; unknown accepted at 95% known acceptance (FPR) {report['fpr_at_95_known']:.3f}")
    if clf.threshold is not None:
        print(f"at the threshold {clf.threshold:.4g}: {report['known_accepted']:.1%} of known accepted, "
              f"{report['unknown_rejected']:.1%} of unknown rejected")


def fail(message: str) -> int:
    print(f"simpsons-infer: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as e:
        return fail(str(e))
    to_stderr("simpsons-infer", logging.WARNING)
    from runtime.classifier import Classifier
    from runtime.errors import SimpsonsError
    from runtime.writers import open_writer

    try:
        files, skipped = find_images(args.paths, args.recursive)
        unknown_files = find_images([args.unknown_dir], True)[0] if args.unknown_dir else []
    except FileNotFoundError as e:
        return fail(str(e))
    if not files:
        return fail("no image files found in " + ", ".join(map(str, args.paths)))
    if args.unknown_dir and not unknown_files:
        return fail(f"--unknown {args.unknown_dir}: no image files found")
    try:
        clf = Classifier(args.model, device=args.device, threads=args.threads,
                         unknown_threshold=args.unknown_threshold, unknown=not args.no_unknown)
        writer = open_writer(args.output, args.top_k)
    except (SimpsonsError, ValueError, OSError) as e:
        return fail(str(e))
    if not args.quiet:
        print(f"simpsons-infer: {len(files)} files, model {args.model.name} ({clf.info.arch}, {len(clf.classes)} classes"
              f"{', portable' if clf.portable else ''}) on {clf.device}", file=sys.stderr)

    start, tally = time.perf_counter(), Tally()
    results = clf.iter_predict(files, top_k=args.top_k, batch_size=args.batch_size)
    bar = None if args.output and not args.quiet else False  # the table on stdout shows progress itself
    try:
        for row in progress(rows(results), len(files), "classifying", enabled=bar):
            writer.write(row)
            tally.add(row, args.evaluate)
    finally:
        writer.close()
    elapsed, total, failed = time.perf_counter() - start, len(files), len(tally.failures)

    if not args.quiet:
        verdict = f"; {tally.unknown} unknown" if clf.threshold is not None else ""
        print(f"classified {total - failed} of {total} files in {elapsed:.1f}s "
              f"({total / max(elapsed, 1e-9):.1f} img/s on {clf.device}); {failed} failed{verdict}; "
              f"{skipped} non-image files skipped", file=sys.stderr)
        print("predicted: " + ", ".join(f"{k} {v}" for k, v in tally.counts.most_common()), file=sys.stderr)
        for path, status in tally.failures:
            print(f"  failed: {path}: {status}", file=sys.stderr)
    if args.evaluate:
        known = print_evaluation(tally.scored, clf.classes)
        if unknown_files:
            print_openset(clf, known, unknown_files, args.batch_size)
    if failed and (args.strict or failed == total):
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
