"""``simpsons``: the data engine, training, evaluation, export and demo data, one command each.

Heavy libraries (torch, torchvision, onnx) are imported inside the commands that need them, so
``simpsons manifest`` and ``simpsons --help`` start fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


class UserError(click.ClickException):
    """A clear one-line error, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"simpsons: error: {self.message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Simpsons character classifier: data engine, training, evaluation and export."""


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--classes", type=click.IntRange(2, 42), default=42, help="how many of the 42 class names to draw")
@click.option("--per-class", type=click.IntRange(1), default=60, help="training frames per class")
@click.option("--test-per-class", type=click.IntRange(0), default=6, help="small test images per class")
@click.option("--size", default="192x144", help="training frame size WxH (test images are a third of it)")
@click.option("--seed", type=int, default=0)
def synth(out: Path, classes: int, per_class: int, test_per_class: int, size: str, seed: int) -> None:
    """Draw a built-in demo data set of cartoon characters in the Kaggle layout under OUT."""
    from pipeline.synth import write_dataset

    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise UserError(f"--size {size!r}: expected WxH, e.g. 192x144") from None
    try:
        planted = write_dataset(out, classes, per_class, test_per_class, seed, (width, height))
    except OSError as e:
        raise UserError(f"{e.filename or out}: cannot write ({e.strerror or e})") from None
    click.echo(f"wrote {planted['train']} training and {planted['test']} test images to {out}; planted: "
               + ", ".join(f"{k} {v}" for k, v in planted.items() if k not in ("train", "test")), err=True)


@main.command()
@click.argument("data_root", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out/data"), help="folder for manifest.parquet, stats.json and plots")
@click.option("--val-fraction", type=click.FloatRange(0.0, 0.9), default=0.15, help="share of each class held out for validation")
@click.option("--seed", type=int, default=0, help="seeds the split")
@click.option("--keep-leaks", is_flag=True, help="keep training copies of test images (reproduces published, leaky numbers)")
@click.option("--workers", type=click.IntRange(1), default=None, help="reader threads (default: one per core)")
@click.option("--no-plots", is_flag=True, help="skip the class-distribution charts")
def manifest(data_root: Path, out_dir: Path, val_fraction: float, seed: int, keep_leaks: bool, workers: int | None, no_plots: bool) -> None:
    """Scan DATA_ROOT (Kaggle layout) into OUT/manifest.parquet and OUT/stats.json."""
    from pipeline import manifest as engine
    from pipeline.scan import LayoutError

    config = engine.ManifestConfig(val_fraction=val_fraction, seed=seed, keep_leaks=keep_leaks)
    try:
        summary = engine.run(data_root, out_dir, config, workers=workers, plots=not no_plots)
    except LayoutError as e:
        raise UserError(str(e)) from None
    except OSError as e:  # the output folder, not the data: bad data files become rows
        raise UserError(f"{e.filename or out_dir}: cannot write ({e.strerror or e})") from None
    totals = summary["totals"]
    click.echo(
        f"{len(summary['classes'])} classes; train {totals['train']}, val {totals['val']}, test {totals['test']}, "
        f"excluded {totals['excluded']} ({', '.join(f'{k} {v}' for k, v in summary['status'].items() if k != 'ok') or 'none'}); "
        f"{len(summary['near_duplicate_groups'])} near-duplicate groups",
        err=True,
    )
    click.echo(f"wrote {out_dir / engine.MANIFEST} and {out_dir / engine.STATS}", err=True)


def _train_config(options: dict):
    from pipeline.train import TrainConfig

    return TrainConfig(**{k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()})


@main.command()
@click.option("--manifest", type=click.Path(path_type=Path), default=Path("out/data/manifest.parquet"))
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/run"), help="run folder: checkpoints, TensorBoard logs, config.json")
@click.option("--arch", default="resnet50", help="any torchvision classifier: resnet18/34/50/101, efficientnet_b0, convnext_tiny, ...")
@click.option("--weights", default="imagenet", help="imagenet (downloaded), none, or a local state-dict file")
@click.option("--image-size", type=click.IntRange(16), default=224)
@click.option("--crop-fraction", type=click.FloatRange(0.5, 1.0), default=0.875, help="eval: resize to size/fraction, centre-crop size")
@click.option("--epochs", type=click.IntRange(1), default=12)
@click.option("--batch-size", type=click.IntRange(1), default=64, help="per process")
@click.option("--lr", type=float, default=1e-3)
@click.option("--weight-decay", type=float, default=0.05)
@click.option("--warmup-epochs", type=click.FloatRange(0), default=1.0)
@click.option("--label-smoothing", type=click.FloatRange(0, 0.5), default=0.1)
@click.option("--balance", type=click.Choice(["sampler", "loss", "none"]), default="sampler", help="class imbalance: weighted sampling, loss weights, or nothing")
@click.option("--freeze-epochs", type=click.IntRange(0), default=0, help="train only the head for this many epochs first")
@click.option("--downscale", type=click.FloatRange(1.0), default=4.0, help="random down-scaling up to this factor (test images are ~3x smaller)")
@click.option("--patience", type=click.IntRange(1), default=5, help="early stopping: epochs without a better val macro-F1")
@click.option("--workers", type=int, default=-1, help="data-loader processes (-1: one per core, at most 8)")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), default="auto", help="mixed precision on CUDA")
@click.option("--compile", is_flag=True, help="torch.compile the model")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--seed", type=int, default=0)
@click.option("--data-root", default=None, help="where the manifest's paths live (default: as recorded in stats.json)")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None, help="continue RUN_DIR exactly from its last.pt and config.json (other options ignored)")
def train(resume_dir: Path | None, **options) -> None:
    """Fine-tune a classifier on the manifest's train split, selecting on val macro-F1."""
    try:
        from pipeline import train as trainer
        from pipeline.model import WeightsError
    except ImportError as e:
        raise UserError(f"training needs the [train] extra ({e.name} is missing): pip install '.[train]'") from None

    if resume_dir is not None:
        if not (resume_dir / "last.pt").is_file() or not (resume_dir / "config.json").is_file():
            raise UserError(f"{resume_dir}: nothing to resume (needs last.pt and config.json)")
        config = trainer.TrainConfig.load(resume_dir / "config.json")
    else:
        config = _train_config(options)
        if not Path(config.manifest).is_file():
            raise UserError(f"{config.manifest}: manifest not found (run `simpsons manifest DATA_ROOT` first)")
    try:
        best = trainer.train(config, resume=resume_dir is not None)
    except (WeightsError, ValueError, RuntimeError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    except OSError as e:
        raise UserError(f"{e.filename or config.out}: {e.strerror or e}") from None
    click.echo(f"best val macro-F1 {best['f1']:.4f} at epoch {best['epoch'] + 1}; checkpoints in {config.out}", err=True)


@main.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), default=Path("out/run/best.pt"))
@click.option("--manifest", type=click.Path(path_type=Path), default=Path("out/data/manifest.parquet"))
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/eval"))
@click.option("--tta", is_flag=True, help="average with the horizontally flipped image")
@click.option("--batch-size", type=click.IntRange(1), default=64)
@click.option("--workers", type=click.IntRange(0), default=2)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--data-root", default=None)
def evaluate(checkpoint: Path, manifest: Path, split: str, out: Path, tta: bool, batch_size: int, workers: int, device: str, data_root: str | None) -> None:
    """Per-class precision/recall/F1, confusion matrix and a picture grid for one split."""
    try:
        from pipeline.evaluate import evaluate_checkpoint
        from pipeline.model import WeightsError
        from runtime.metrics import report_table
    except ImportError as e:
        raise UserError(f"evaluation needs the [train] extra ({e.name} is missing): pip install '.[train]'") from None
    if not manifest.is_file():
        raise UserError(f"{manifest}: manifest not found")
    try:
        report = evaluate_checkpoint(checkpoint, manifest, split, out, tta, batch_size, workers, device, data_root)
    except (WeightsError, ValueError, RuntimeError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    except OSError as e:
        raise UserError(f"{e.filename or out}: {e.strerror or e}") from None
    click.echo(report_table(report))
    click.echo(f"wrote report.json, report.md, confusion.png, predictions.png, predictions.csv to {out}", err=True)


@main.command(name="export")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=Path("out/run/best.pt"))
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/model.onnx"))
@click.option("--manifest", type=click.Path(path_type=Path), default=None, help="for verification and calibration images (default: the training manifest)")
@click.option("--int8", is_flag=True, help="also write a static-quantised int8 model (CPU)")
@click.option("--fp16", is_flag=True, help="also write a float16 model (GPU)")
@click.option("--tolerance", type=float, default=1e-3, help="max |logit difference| to PyTorch")
@click.option("--eval-images", type=click.IntRange(1), default=2000, help="val images used to score each variant")
@click.option("--calibration-images", type=click.IntRange(1), default=512, help="train images for int8 calibration (min-max)")
def export_command(checkpoint: Path, out: Path, manifest: Path | None, int8: bool, fp16: bool, tolerance: float, eval_images: int, calibration_images: int) -> None:
    """Export a checkpoint to ONNX with its metadata, verify it, and add int8/fp16 variants."""
    try:
        from export.onnx_export import ExportError, export
        from pipeline.model import WeightsError
    except ImportError as e:
        raise UserError(f"export needs the [train] extra ({e.name} is missing): pip install '.[train]'") from None
    try:
        report = export(checkpoint, out, manifest, int8, fp16, tolerance, eval_images=eval_images, calibration_images=calibration_images)
    except (ExportError, WeightsError, ValueError) as e:
        raise UserError(str(e)) from None
    click.echo(f"wrote {', '.join(v['file'] for v in report['variants'].values())} and {out.with_suffix('.report.json').name} in {out.parent}", err=True)


if __name__ == "__main__":
    sys.exit(main())
