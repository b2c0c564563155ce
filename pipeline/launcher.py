"""The ``simpsons`` console script's entry: a base (runtime-only) install has no click, torch
or polars, and must say what to install instead of failing with a traceback."""

from __future__ import annotations

import sys

from pipeline.memory import polars_returns_freed_memory


def main() -> None:
    polars_returns_freed_memory()
    try:
        import click  # noqa: F401
        import polars  # noqa: F401
    except ImportError as e:
        sys.exit(f"simpsons: error: the data, training and export tools need the [train] extra "
                 f"({e.name} is missing): pip install 'simpsons-classifier[train]'")
    from pipeline.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
