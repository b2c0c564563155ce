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
@click.argument("data_root", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out/data"), help="folder for manifest.parquet, stats.json and plots")
@click.option("--val-fraction", type=click.FloatRange(0.0, 0.9), default=0.15, help="share of each class held out for validation")
@click.option("--seed", type=int, default=0, help="seeds the split")
@click.option("--keep-leaks", is_flag=True, help="keep training copies of test images (reproduces published, leaky numbers)")
@click.option("--workers", type=click.IntRange(1), default=None, help="reader threads (default: 2 per core, at most 8)")
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
    totals = summary["totals"]
    click.echo(
        f"{len(summary['classes'])} classes; train {totals['train']}, val {totals['val']}, test {totals['test']}, "
        f"excluded {totals['excluded']} ({', '.join(f'{k} {v}' for k, v in summary['status'].items() if k != 'ok') or 'none'}); "
        f"{len(summary['near_duplicate_groups'])} near-duplicate groups",
        err=True,
    )
    click.echo(f"wrote {out_dir / engine.MANIFEST} and {out_dir / engine.STATS}", err=True)


if __name__ == "__main__":
    sys.exit(main())
