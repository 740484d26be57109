"""`lazarus plot RUN_DIR [--out DIR]`: write PNG curves of a run's metrics.jsonl and list the files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def plot(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding metrics.jsonl.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write the PNGs (default: RUN_DIR/plots).")
    ] = None,
) -> None:
    """Write PNG curves of a training run: one per metric group, and overview.png."""
    # Imported here so that other `lazarus` commands do not pay for loading matplotlib.
    from lazarus.observe.metrics import MetricsFileError
    from lazarus.observe.plots import plot_run

    try:
        written = plot_run(run_dir, out)
    except (OSError, MetricsFileError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    for path in written:
        typer.echo(str(path))
