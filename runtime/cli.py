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
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from runtime.labels import label_from_path
from runtime.listing import Listing, display_path
from runtime.logs import to_stderr
from runtime.memory import return_large_blocks
from runtime.parallel import usable_cores
from runtime.progress import progress

log = logging.getLogger("simpsons.infer")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_BATCH = 128  # a larger batch only grows memory (decoded images in flight, activations), not speed
# onnxruntime's threads each want a core; decoding threads gain from more than the cores only
# while they wait on slow storage (a network disk), and 4 per core covers that. Beyond it,
# each thread is a stack and a share of the cores: 100000 of them exhausted a machine.
THREADS_PER_CORE = 4


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
    parser.add_argument("--batch-size", type=int, default=32, help=f"images per model run (at most {MAX_BATCH})")
    parser.add_argument("--top-k", type=int, default=3, help="classes per row, best first (at most the model's classes)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help=f"onnxruntime and decoding threads (default: all cores; at most {THREADS_PER_CORE} per core)")
    parser.add_argument("--no-recursive", dest="recursive", action="store_false", help="only the top level of each folder")
    parser.add_argument("--unknown-threshold", type=finite_float, default=None, metavar="X",
                        help="label an image 'unknown' when its ood_score is above X (default: the threshold stored in the model)")
    parser.add_argument("--no-unknown", action="store_true", help="never answer 'unknown': every image gets its best class")
    parser.add_argument("--evaluate", action="store_true", help="labels from class folders or <class>_<n> names: print accuracy and F1")
    parser.add_argument("--unknown", dest="unknown_dir", type=Path, default=None, metavar="DIR",
                        help="with --evaluate: images of characters outside the classes; print how well the unknown verdict separates them")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run: append to the -o .csv/.jsonl after the last row it holds")
    parser.add_argument("--ray", metavar="ADDRESS", default=None,
                        help="classify on a Ray cluster: local (start one here), auto (this machine's cluster) or ray://HOST:10001 "
                             "(needs the [distributed] extra; files must be readable at the same paths on every node)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any file fails")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.top_k < 1:
        parser.error("--batch-size and --top-k must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.unknown_dir is not None and not args.evaluate:
        parser.error("--unknown DIR needs --evaluate (it measures the unknown verdict against labelled files)")
    if args.no_unknown and args.unknown_threshold is not None:
        parser.error("--no-unknown and --unknown-threshold exclude each other")
    return args


@dataclass
class Tally:
    """What a run keeps of its rows: counts, failures and, for --evaluate, (path, best class,
    ood_score) of each labelled-looking file; never the rows themselves, so memory stays flat."""

    counts: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    scored: list[tuple[str, str, float | None]] = field(default_factory=list)
    unknown: int = 0
    total: int = 0

    def add(self, row: dict, keep_scores: bool) -> None:
        self.total += 1
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


def prediction_rows(clf, files, args: argparse.Namespace) -> Iterator[dict]:
    """Rows for ``files``: from this process's classifier, or with ``--ray`` from the cluster's
    workers (the same Classifier code there, results in the same order)."""
    if args.ray is None:
        yield from (result.row() for result in clf.iter_predict(files, top_k=args.top_k, batch_size=args.batch_size))
        return
    from runtime.distributed import classify

    yield from classify(args.ray, list(files), args.model, args.top_k, args.batch_size, args.unknown_threshold, not args.no_unknown)


def capped(option: str, value: int | None, limit: int, why: str) -> int | None:
    """``value``, or ``limit`` with a one-line warning saying why when it is above."""
    if value is None or value <= limit:
        return value
    log.warning("%s %d capped at %d: %s", option, value, limit, why)
    return limit


def fail(message: str) -> int:
    print(f"simpsons-infer: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as e:
        return fail(str(e))
    to_stderr("simpsons-infer", logging.WARNING)
    return_large_blocks()
    # Pillow warns from the header of any picture above 89 MP; runtime.preprocess.MAX_PIXELS
    # decides, after a JPEG's reduction on decode, and its refusal is the row's reason.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    from runtime.classifier import UNKNOWN, Classifier
    from runtime.errors import SimpsonsError
    from runtime.writers import STREAMED, open_writer

    try:
        listing = Listing(args.paths, args.recursive)
        unknown_files = list(Listing([args.unknown_dir])) if args.unknown_dir else []
        first = next(iter(listing), None)
    except OSError as e:
        return fail(str(e) if isinstance(e, FileNotFoundError) else f"{display_path(e.filename or '')}: {e.strerror or e}")
    if first is None:
        return fail("no image files found in " + ", ".join(map(display_path, args.paths)))
    if args.unknown_dir and not unknown_files:
        return fail(f"--unknown {args.unknown_dir}: no image files found")
    args.batch_size = capped("--batch-size", args.batch_size, MAX_BATCH,
                             "larger batches hold more decoded images without running faster")
    args.threads = capped("--threads", args.threads, THREADS_PER_CORE * usable_cores(),
                          f"{THREADS_PER_CORE} per core here; more only wait for one another")
    output = args.output or "standard output"  # what messages name
    try:
        clf = Classifier(args.model, device=args.device, threads=args.threads,
                         unknown_threshold=args.unknown_threshold, unknown=not args.no_unknown)
        args.top_k = capped("--top-k", args.top_k, len(clf.classes), "the model has no more classes")
        writer = open_writer(args.output, args.top_k, resume=args.resume, labels=(*clf.classes, UNKNOWN))
    except (SimpsonsError, OSError) as e:
        return fail(str(e) if isinstance(e, SimpsonsError) else f"{display_path(e.filename or output)}: cannot write ({e.strerror or e})")
    if not args.quiet:
        resumed = f", resuming after {writer.last_path}" if writer.last_path else ""
        print(f"simpsons-infer: model {args.model.name} ({clf.info.arch}, {len(clf.classes)} classes"
              f"{', portable' if clf.portable else ''}) on {clf.device}{resumed}", file=sys.stderr)

    start, tally = time.perf_counter(), Tally()
    bar = None if args.output and not args.quiet else False  # the table on stdout shows progress itself
    try:
        for row in progress(prediction_rows(clf, listing.after(writer.last_path), args), None, "classifying", enabled=bar):
            writer.write(row)
            tally.add(row, args.evaluate)
    except KeyboardInterrupt:
        writer.abort()
        kept = f"the rows so far are in {args.output}" if args.output and args.output.suffix.lower() in STREAMED else "no rows written"
        print(f"simpsons-infer: interrupted after {tally.total} files; {kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SimpsonsError as e:
        writer.abort()
        return fail(str(e))
    except OSError as e:  # reading, not writing: the writers report their own failures as OutputError
        writer.abort()
        return fail(f"{display_path(e.filename) if e.filename else 'the inputs'}: cannot read ({e.strerror or e})")
    except BaseException:  # a bug keeps its traceback, but leaves no temporary file or lock behind
        writer.abort()
        raise
    try:
        writer.close()
    except OSError as e:
        return fail(f"{display_path(output)}: cannot write ({e.strerror or e}); the earlier output is untouched")
    elapsed, total, failed = time.perf_counter() - start, tally.total, len(tally.failures)

    if not args.quiet:
        verdict = f"; {tally.unknown} unknown" if clf.threshold is not None else ""
        print(f"classified {total - failed} of {total} files in {elapsed:.1f}s "
              f"({total / max(elapsed, 1e-9):.1f} img/s on {clf.device}); {failed} failed{verdict}; "
              f"{listing.skipped} non-image files skipped", file=sys.stderr)
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
