"""Load a model and its tokenizer: a local HF-format / mlx-community directory, or a GGUF file.

Directories go through mlx-lm's own loader (every family it supports, plus LazyFox). GGUF files go
through `lazarus.models.gguf`. An adapter directory in mlx-lm's format can be applied on load.
"""

from __future__ import annotations

from lazarus.errors import LazarusError
from pathlib import Path

import mlx.nn as nn

import lazarus.models  # noqa: F401  (registers LazyFox)


class ModelLoadError(LazarusError, ValueError):
    """A model path that cannot be loaded; the message names the path and what is missing."""


def load(path: str | Path, adapter: str | Path | None = None, lazy: bool = False):
    """Return `(model, tokenizer)` for a local model directory or `.gguf` file.

    `tokenizer` is mlx-lm's `TokenizerWrapper` (HF tokenizer with streaming detokenizer and
    `eos_token_ids`). With `adapter`, LoRA adapters in mlx-lm's format are applied.
    """
    path = Path(path)
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
    if adapter is not None:
        from lazarus.models.lora import load_adapter

        load_adapter(model, adapter)
    model.eval()
    return model, tokenizer


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
