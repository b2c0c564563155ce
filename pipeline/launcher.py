"""The ``simpsons`` console script's entry: a base (runtime-only) install has no click, torch
or polars, and must say what to install instead of failing with a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        import click  # noqa: F401
        import polars  # noqa: F401
    except ImportError as e:
        sys.exit(f"simpsons: error: the data, training and export tools need the [train] extra "
                 f"({e.name} is missing): pip install 'simpsons-classifier[train]'")
    from pipeline.cli import main as cli

    cli()
