"""``simpsons-infer``: classify image files and folders with an exported ONNX model.

Exit codes: 0 done (files that failed have error rows); 1 every file failed, or some failed
under ``--strict``; 2 usage error, nothing to classify, unusable model or device.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from runtime.labels import is_image_name, label_from_path
from runtime.progress import progress

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="simpsons-infer",
        description="Classify Simpsons character images with an exported ONNX model.",
        epilog="Exit codes: 0 done, 1 all files failed (or any, with --strict), 2 usage/model/device error.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="image files and folders")
    parser.add_argument("--model", "-m", type=Path, required=True, help="model.onnx from `simpsons export`")
    parser.add_argument("--output", "-o", type=Path, help="rows to .csv, .jsonl, .json or .parquet (default: a table on stdout)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime and decoding threads (default: all cores)")
    parser.add_argument("--no-recursive", dest="recursive", action="store_false", help="only the top level of each folder")
    parser.add_argument("--evaluate", action="store_true", help="labels from class folders or <class>_<n> names: print accuracy and F1")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any file fails")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.top_k < 1:
        parser.error("--batch-size and --top-k must be at least 1")
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


def rows(results, top_k: int) -> Iterator[dict]:
    for r in results:
        p = r.prediction
        yield {
            "path": str(r.source),
            "status": "ok" if p else r.error,
            "label": p.label if p else None,
            "confidence": p.confidence if p else None,
            "top_labels": [lab for lab, _ in p.top_k] if p else [],
            "top_probs": [prob for _, prob in p.top_k] if p else [],
        }


def print_evaluation(predicted: list[tuple[str, str]], classes: Sequence[str]) -> None:
    """Accuracy and per-class F1 for the (path, predicted label) pairs whose path carries a label."""
    from runtime.metrics import classification_report, report_table

    pairs = [(label_from_path(path, classes), label) for path, label in predicted]
    labelled = [(t, p) for t, p in pairs if t is not None]
    if not labelled:
        print("--evaluate: no file carries a known label (class folder or <class>_<n> name)", file=sys.stderr)
        return
    report = classification_report([t for t, _ in labelled], [p for _, p in labelled], classes)
    print(f"\nEvaluation on {len(labelled)} labelled files ({len(pairs) - len(labelled)} unlabelled skipped)")
    print(report_table(report))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from runtime.classifier import Classifier, DeviceError, ModelError
    from runtime.writers import open_writer

    def fail(message: str) -> int:
        print(f"simpsons-infer: error: {message}", file=sys.stderr)
        return EXIT_USAGE

    try:
        files, skipped = find_images(args.paths, args.recursive)
    except FileNotFoundError as e:
        return fail(str(e))
    if not files:
        return fail("no image files found in " + ", ".join(map(str, args.paths)))
    try:
        clf = Classifier(args.model, device=args.device, threads=args.threads)
        writer = open_writer(args.output, args.top_k)
    except (ModelError, DeviceError, ValueError, OSError) as e:
        return fail(str(e))
    if not args.quiet:
        print(f"simpsons-infer: {len(files)} files, model {args.model.name} ({clf.info.arch}, "
              f"{len(clf.classes)} classes) on {clf.device}", file=sys.stderr)

    # Only counts, failures and (for --evaluate) label pairs are kept: memory stays flat.
    start, counts, failures, predicted = time.perf_counter(), Counter(), [], []
    results = clf.iter_predict(files, top_k=args.top_k, batch_size=args.batch_size)
    bar = None if args.output and not args.quiet else False  # the table on stdout shows progress itself
    try:
        for row in progress(rows(results, args.top_k), len(files), "classifying", enabled=bar):
            writer.write(row)
            if row["label"]:
                counts[row["label"]] += 1
                if args.evaluate:
                    predicted.append((row["path"], row["label"]))
            else:
                failures.append((row["path"], row["status"]))
    finally:
        writer.close()
    elapsed, total = time.perf_counter() - start, len(files)

    if not args.quiet:
        print(f"classified {total - len(failures)} of {total} files in {elapsed:.1f}s "
              f"({total / max(elapsed, 1e-9):.1f} img/s on {clf.device}); {len(failures)} failed; "
              f"{skipped} non-image files skipped", file=sys.stderr)
        print("predicted: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()), file=sys.stderr)
        for path, status in failures:
            print(f"  failed: {path}: {status}", file=sys.stderr)
    if args.evaluate:
        print_evaluation(predicted, clf.classes)
    if failures and (args.strict or len(failures) == total):
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
