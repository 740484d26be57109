"""Convert a model (GGUF file or HF-format directory) into an MLX model directory `mlx_lm.load` reads.

`convert(src, out, dtype="float32", bits=None)`: the weights are dequantized if the source is quantized,
cast to `dtype`, then quantized to `bits` (4 or 8, MLX affine, group size 64) when asked. The tokenizer
and chat template travel with them. What `lazarus convert` runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from lazarus.models.load import ModelLoadError, resolve_model_path
from lazarus.models.quantize import DTYPES, dequantize, is_quantized, quantize, save_quantized

CONVERT_BITS = (4, 8)


def convert(src: str | Path, out: str | Path, dtype: str = "float32", bits: int | None = None) -> Path:
    """Write `src` as an MLX directory at `out` (atomically; refuses an existing `out`); return `out`."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if bits is not None and bits not in CONVERT_BITS:
        raise ModelLoadError(f"--quantize {bits}: choose one of {', '.join(map(str, CONVERT_BITS))}")
    src, out = resolve_model_path(src), Path(out)
    if out.exists():
        raise ModelLoadError(f"--out {out} exists; choose a new directory")
    model, tokenizer, config = _read(src)
    if is_quantized(model):
        dequantize(model, DTYPES[dtype])
    else:
        model.set_dtype(DTYPES[dtype])
    if bits is not None:
        quantize(model, bits=bits, group_size=64)
    config["torch_dtype"] = dtype
    return save_quantized(model, config, out, tokenizer=tokenizer)


def _read(src: Path):
    """(model, HF tokenizer, config dict) of a GGUF file or an HF-format directory, as stored."""
    if src.is_file() and src.suffix == ".gguf":
        from lazarus.models.gguf import _build

        return _build(src)
    if not src.is_dir() or not (src / "config.json").is_file():
        raise ModelLoadError(f"{src}: neither a .gguf file nor a model directory with config.json")
    from lazarus.models.load import load

    model, tokenizer = load(src, dequantize="never")
    config = json.loads((src / "config.json").read_text())
    return model, getattr(tokenizer, "_tokenizer", tokenizer), config
