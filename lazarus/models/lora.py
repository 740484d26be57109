"""LoRA on mlx-lm models: apply, save/load in mlx-lm's adapter format, fuse, enable/disable.

Built on mlx-lm's own LoRA layers (`mlx_lm.tuner`), so `mlx_lm.generate --adapter-path` accepts our
adapters and we accept theirs. `adapters_disabled(model)` gives the reference model for DPO/GRPO:
the base with adapters off, without a second copy of the weights.

mlx-lm's LoRALinear computes `base(x) + scale * (x @ A) @ B`; we expose the usual `alpha` and set
`scale = alpha / rank`, as PEFT users expect.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from lazarus.errors import LazarusError
from lazarus.models.io import atomic_dir, read_json, save_safetensors, write_json

#: Architecture sizes that an adapter's base must share (from the model's `args`, as in config.json).
_BASE_DIMS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapters.safetensors"
LORA_TYPES = (LoRALinear, LoRASwitchLinear, LoRAEmbedding)


class AdapterError(LazarusError, ValueError):
    """An adapter directory that does not fit the model; the message names the file and tensor."""


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # e.g. ["self_attn.q_proj", "self_attn.v_proj"]; None = all linears
    num_layers: int | None = None  # last N transformer blocks; None = all
    extra: dict = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               target_modules: list[str] | None = None, num_layers: int | None = None) -> nn.Module:
    """Freeze `model` and add trainable LoRA adapters (in place); returns `model`.

    `target_modules` are module paths inside a transformer block (e.g. "self_attn.q_proj"); None means
    every linear layer of the block. `num_layers` counts from the last block (None = all blocks).
    """
    settings = LoraSettings(rank, alpha, dropout, target_modules, num_layers)
    if rank <= 0:
        raise ValueError(f"lora rank must be positive, got {rank}")
    n_blocks = len(model.layers)
    num_layers = n_blocks if num_layers is None else num_layers
    if not 0 < num_layers <= n_blocks:
        raise ValueError(f"lora num_layers must be in 1..{n_blocks}, got {num_layers}")
    if target_modules is not None:
        known = {name for name, m in model.layers[-1].named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))}
        unknown = sorted(set(target_modules) - known)
        if unknown:
            raise AdapterError(f"lora.target_modules: {unknown} are not linear layers of a block; "
                               f"choose from {sorted(known)}")
    model.freeze()
    linear_to_lora_layers(model, num_layers, _mlx_lm_parameters(settings))
    model._lazarus_lora = settings  # what save_adapter writes
    return model


def _mlx_lm_parameters(settings: LoraSettings) -> dict:
    params = {"rank": settings.rank, "scale": settings.scale, "dropout": settings.dropout}
    if settings.target_modules is not None:
        params["keys"] = list(settings.target_modules)
    return params


def lora_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LORA_TYPES)]


def has_lora(model: nn.Module) -> bool:
    return bool(lora_modules(model))


def adapter_parameters(model: nn.Module) -> dict[str, mx.array]:
    """The adapter tensors (flattened names, as in `adapters.safetensors`)."""
    return {k: v for k, v in tree_flatten(model.parameters()) if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b")}


def base_fingerprint(model: nn.Module) -> dict:
    """What identifies the base model an adapter was trained on: architecture, sizes, and a hash of the
    normalization weights (never quantized, never adapted; they differ between checkpoints of one family).

    Quantizing the base (QLoRA) does not change it, so a QLoRA adapter still fits the full-precision base.
    """
    args = getattr(model, "args", None)
    dims = {k: getattr(args, k) for k in _BASE_DIMS if isinstance(getattr(args, k, None), int)}
    digest = hashlib.sha256()
    for name, value in sorted(tree_flatten(model.parameters()), key=lambda item: item[0]):
        parts = name.split(".")
        if len(parts) >= 2 and "norm" in parts[-2] and parts[-1] == "weight":
            digest.update(name.encode())
            digest.update(np.asarray(mx.round(value.astype(mx.float32), 3)).tobytes())
    return {"model_type": str(getattr(model, "model_type", type(model).__name__)), "dims": dims,
            "norms_sha256": digest.hexdigest()}


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """What differs between the base an adapter was trained on and this model (empty when they match)."""
    differences = []
    if saved.get("model_type") not in (None, current["model_type"]):
        differences.append(f"architecture {saved['model_type']!r}, this model is {current['model_type']!r}")
    for key, value in (saved.get("dims") or {}).items():
        if key in current["dims"] and current["dims"][key] != value:
            differences.append(f"{key} {value}, this model has {current['dims'][key]}")
    if not differences and saved.get("norms_sha256") not in (None, current["norms_sha256"]):
        differences.append("same architecture and sizes but different weights (normalization weights differ)")
    return differences


def save_adapter(model: nn.Module, out_dir: str | Path, metadata: dict | None = None) -> Path:
    """Write `adapter_config.json` + `adapters.safetensors` (mlx-lm's format) atomically.

    The base model's fingerprint goes into `adapter_config.json` (`lazarus.base_fingerprint`, an extra key
    mlx-lm ignores); `load_adapter` refuses the adapter on a base that does not match it.
    """
    settings: LoraSettings | None = getattr(model, "_lazarus_lora", None)
    if settings is None:
        raise AdapterError("model has no LoRA adapters to save (call apply_lora or load_adapter first)")
    weights = adapter_parameters(model)
    config = {
        "fine_tune_type": "lora",
        "num_layers": settings.num_layers or len(model.layers),
        "lora_parameters": _mlx_lm_parameters(settings),
        "lazarus": {"alpha": settings.alpha, "base_fingerprint": base_fingerprint(model), **(metadata or {})},
    }
    with atomic_dir(out_dir) as tmp:
        save_safetensors(tmp / ADAPTER_WEIGHTS, weights)
        write_json(tmp / ADAPTER_CONFIG, config)
    return Path(out_dir)


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Apply adapters saved by us or by `mlx_lm.lora` to `model` (in place)."""
    adapter_dir = Path(adapter_dir)
    config_path, weights_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    for p in (config_path, weights_path):
        if not p.exists():
            raise AdapterError(f"adapter directory {adapter_dir} has no {p.name}")
    try:
        config = read_json(config_path)
    except (OSError, ValueError) as e:
        raise AdapterError(f"{config_path}: unreadable ({e})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path}: must be a JSON object")
    if config.get("fine_tune_type", "lora") != "lora":
        raise AdapterError(f"{config_path}: fine_tune_type {config.get('fine_tune_type')!r} is not supported "
                           "(only 'lora')")
    try:
        params = config["lora_parameters"]
        rank, scale = int(params["rank"]), float(params["scale"])
        num_layers = int(config["num_layers"])
    except (KeyError, TypeError, ValueError) as e:
        raise AdapterError(f"{config_path}: missing or bad field {e}") from None
    ours = config.get("lazarus") if isinstance(config.get("lazarus"), dict) else {}
    saved_base = ours.get("base_fingerprint")
    if isinstance(saved_base, dict):
        differences = fingerprint_differences(saved_base, base_fingerprint(model))
        if differences:
            raise AdapterError(f"{adapter_dir}: adapter was trained on a different base model: "
                               f"{'; '.join(differences)}" + (f" (trained on {ours['base_model']})"
                                                              if ours.get("base_model") else ""))
    alpha = ours.get("alpha", scale * rank)
    if not has_lora(model):
        apply_lora(model, rank=rank, alpha=alpha, dropout=float(params.get("dropout", 0.0)),
                   target_modules=params.get("keys"), num_layers=min(num_layers, len(model.layers)))
    expected = adapter_parameters(model)
    try:
        weights = mx.load(str(weights_path))
    except (RuntimeError, ValueError, OSError) as e:
        raise AdapterError(f"{weights_path}: unreadable (truncated or damaged?): {e}") from None
    for name, w in weights.items():
        if name not in expected:
            raise AdapterError(f"{weights_path}: tensor {name} is not an adapter parameter of this model")
        if w.shape != expected[name].shape:
            raise AdapterError(f"{weights_path}: tensor {name} has shape {tuple(w.shape)}, "
                               f"model expects {tuple(expected[name].shape)}")
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())
    return model


def fuse_lora(model: nn.Module, dequantize: bool = False) -> nn.Module:
    """Merge adapters into the base weights (in place) and drop the LoRA layers."""
    fused = [(name, m.fuse(dequantize=dequantize)) for name, m in lora_modules(model)]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if hasattr(model, "_lazarus_lora"):
        del model._lazarus_lora
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model: every LoRA layer's scale is 0 inside the block (no weight copy).

    Use it outside `mx.compile`d functions: the scale is a Python float baked in at trace time.
    """
    saved = [(m, m.scale) for _, m in lora_modules(model)]
    try:
        for m, _ in saved:
            m.scale = 0.0
        yield model
    finally:
        for m, scale in saved:
            m.scale = scale


#: `lora.merge_for_sampling: auto` merges only when the merged weights take at most this many bytes: small
#: models, whose decode step is mostly the cost of launching its ops (SmolLM2-135M's would be ~420 MB more
#: memory while sampling, for a step that the adapters' two small matmuls barely lengthen).
AUTO_MERGE_MAX_BYTES = 64 * 2**20


@contextlib.contextmanager
def adapters_merged(model: nn.Module, max_bytes: int | None = None) -> Iterator[int]:
    """Run each float32 `LoRALinear` as one linear layer of weight W + scale * (A B)^T inside the block;
    yields how many layers were merged. Put back on the way out: the adapters stay what trains.

    For sampling: a decode step on a small model is one matmul per layer instead of three, and the numbers
    are the adapter path's to float rounding. Only float32 weights merge: a bfloat16 weight cannot hold a
    young adapter's delta (below its rounding step, it would sample the base); quantized linear layers, MoE
    and embedding adapters keep the adapter path. Costs one copy of each merged weight while inside; with
    `max_bytes`, nothing merges (0 is yielded) when those copies would take more. Not for training, and not
    while another thread runs the model.
    """
    mergeable = [(name, m) for name, m in lora_modules(model)
                 if type(m) is LoRALinear and type(m.linear) is nn.Linear and m.linear.weight.dtype == mx.float32]
    if max_bytes is not None and sum(m.linear.weight.nbytes for _, m in mergeable) > max_bytes:
        mergeable = []
    merged, originals = [], []
    for name, m in mergeable:
        layer = nn.Linear(1, 1, bias="bias" in m.linear)
        layer.weight = m.linear.weight + m.scale * (m.lora_a @ m.lora_b).T
        if "bias" in m.linear:
            layer.bias = m.linear.bias
        merged.append((name, layer))
        originals.append((name, m))
    if merged:
        model.update_modules(tree_unflatten(merged))
    try:
        yield len(merged)
    finally:
        if originals:
            model.update_modules(tree_unflatten(originals))


def lora_settings(model: nn.Module) -> dict | None:
    settings = getattr(model, "_lazarus_lora", None)
    return asdict(settings) if settings else None
