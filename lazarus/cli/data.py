"""`lazarus data`: dataset commands. `lazarus data math --out DIR` writes the generated math task."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def data():
    """Generate datasets."""


@app.command()
def math(
    out: Path = typer.Option(..., "--out", help="Directory for the JSONL files (created if missing)."),
    n_train: int = typer.Option(2000, "--train", help="Number of training problems."),
    n_eval: int = typer.Option(200, "--eval", help="Held-out problems (no prompt shared with train)."),
    difficulty: int = typer.Option(1, "--difficulty", help="1 (one-step, small numbers) to 3."),
    kinds: str | None = typer.Option(
        None, "--kinds", help="Comma-separated problem kinds (default all): arithmetic, fractions, "
                              "percentages, word_problems, multi_step, comparison."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same problems."),
    answer_only: float = typer.Option(
        0.0, "--answer-only", help="Fraction of SFT completions that give only the final 'Answer:' line, "
                                   "without the worked steps (a two-style demonstration set)."),
    instruction: str = typer.Option(
        None, "--instruction", help="Text appended to every prompt, telling a model the answer format the "
                                    "rewards read (default: lazarus.data.math.INSTRUCTION); '' for none."),
):
    """Write the math task as SFT, preference and RL-prompt JSONL, train and held-out eval."""
    from lazarus.data.math import INSTRUCTION, write_math_dataset

    kind_list = [k.strip() for k in kinds.split(",") if k.strip()] if kinds is not None else None
    try:
        paths = write_math_dataset(out, n_train=n_train, n_eval=n_eval, kinds=kind_list,
                                   difficulty=difficulty, seed=seed, answer_only=answer_only,
                                   instruction=INSTRUCTION if instruction is None else instruction)
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for path in paths.values():
        typer.echo(f"wrote {path}")
