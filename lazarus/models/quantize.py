"""Quantize mlx-lm models to 2-8 bits with MLX's own affine quantization, and save them for `mlx_lm.load`.

`quantize(model, bits, group_size)` swaps each linear/embedding layer whose input dimension divides
`group_size` for its quantized form (`nn.QuantizedLinear`, `nn.QuantizedEmbedding`); the others stay
in float. `save_quantized` writes an HF-format directory whose `config.json` carries the
`quantization` entry that mlx-lm's loader reads back.

QLoRA is LoRA on a quantized base: `quantize(model, 4)` then `lazarus.models.lora.apply_lora(model)`.
Quantized layers are frozen, mlx-lm's LoRA layers wrap `QuantizedLinear`, and gradients reach only
the adapters.

`dequantize(model, dtype)` goes the other way. On MLX's CPU backend quantized matmuls are an order of
magnitude slower than float32 BLAS (SmolLM2-135M Q4_1: 9.5 s per generated token for 32 prompts,
1.16 s after dequantizing), so `lazarus.models.load` dequantizes on the CPU unless told not to
(`should_dequantize`).
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten, tree_map

from lazarus.models.io import atomic_dir, save_safetensors, write_json

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
_QUANTIZED_TYPES = (nn.QuantizedLinear, nn.QuantizedEmbedding)


def quantize(model: nn.Module, bits: int = 4, group_size: int = 64) -> nn.Module:
    """Quantize `model` in place (affine, `bits` per weight, one scale and bias per `group_size`); return it.

    Layers whose input dimension is not a multiple of `group_size` are left in float.
    """
    if bits not in BITS:
        raise ValueError(f"quantization bits must be one of {BITS}, got {bits}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"quantization group_size must be one of {GROUP_SIZES}, got {group_size}")

    def divides(_path: str, module: nn.Module) -> bool:
        return hasattr(module, "to_quantized") and module.weight.shape[-1] % group_size == 0

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=divides)
    if quantization_config(model) is None:
        raise ValueError(f"quantization group_size={group_size} divides the input dimension of no layer")
    return model


def quantization_config(model: nn.Module) -> dict | None:
    """The `quantization` entry of config.json for `model`, or None when nothing is quantized.

    The most common (group_size, bits) is the default; layers that differ are listed by path, as
    mlx-lm writes and reads them.
    """
    per_layer = {
        path: {"group_size": module.group_size, "bits": module.bits}
        for path, module in model.named_modules()
        if isinstance(module, _QUANTIZED_TYPES)
    }
    if not per_layer:
        return None
    counts = Counter(tuple(q.items()) for q in per_layer.values())
    default = dict(counts.most_common(1)[0][0])
    return {**default, **{path: q for path, q in sorted(per_layer.items()) if q != default}}


DEQUANTIZE_MODES = ("auto", "always", "never")
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def is_quantized(model: nn.Module) -> bool:
    """Whether any layer of `model` is a quantized linear or embedding."""
    return any(isinstance(m, _QUANTIZED_TYPES) for _, m in model.named_modules())


def quantized_matmul_is_slow() -> bool:
    """True on MLX's CPU backend (no Metal): quantized matmul there is far slower than float BLAS."""
    return mx.default_device().type == mx.DeviceType.cpu


def should_dequantize(mode: str, model: nn.Module) -> bool:
    """`mode` is `auto` (dequantize a quantized model when quantized matmul is slow), `always` or `never`."""
    if mode not in DEQUANTIZE_MODES:
        raise ValueError(f"dequantize must be one of {', '.join(DEQUANTIZE_MODES)}, got {mode!r}")
    if mode == "never" or not is_quantized(model):
        return False
    return mode == "always" or quantized_matmul_is_slow()


def dequantize(model: nn.Module, dtype: mx.Dtype = mx.float32) -> nn.Module:
    """Replace every quantized layer of `model` by its float form and cast all float weights to `dtype`.

    In place; returns `model`. The weights are exactly what the quantized layers computed with
    (`mx.dequantize` of the packed values), so outputs agree up to float rounding.
    """
    from mlx_lm.utils import dequantize_model

    dequantize_model(model)
    model.update(tree_map(lambda w: w.astype(dtype) if mx.issubdtype(w.dtype, mx.floating) else w,
                          model.parameters()))
    mx.eval(model.parameters())
    return model


def save_quantized(model: nn.Module, config: dict, out_dir: str | Path, tokenizer=None) -> Path:
    """Write `model` (quantized or not) as an HF-format directory `mlx_lm.load` reads; return `out_dir`.

    `config` is the model's config.json content; its `quantization` entry is set from the model (or
    removed when nothing is quantized). With `tokenizer` (HF tokenizer or mlx-lm's wrapper), its files
    are written too. The directory is replaced atomically. Fuse or drop LoRA adapters first.
    """
    weights = dict(tree_flatten(model.parameters()))
    adapters = [name for name in weights if ".lora_" in name]
    if adapters:
        raise ValueError(f"model has LoRA adapters ({adapters[0]}, ...): fuse them (lora.fuse_lora) before saving")
    config = copy.deepcopy(config)
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    quantization = quantization_config(model)
    if quantization is not None:
        config["quantization"] = quantization
        config["quantization_config"] = quantization  # the key HF tooling looks for
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_safetensors(tmp / "model.safetensors", weights, metadata={"format": "mlx"})
        write_json(tmp / "config.json", config)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return out_dir
