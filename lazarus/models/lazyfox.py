"""LazyFox: the project's own small decoder architecture.

A pre-norm decoder with a *parallel* block (attention and MLP read the same normed input and are
added to the residual together, as in GPT-J/PaLM), QK-norm (RMSNorm on each head's queries and keys,
which keeps small random-init models stable under RL updates), grouped-query attention, RoPE, a SwiGLU
MLP and tied embeddings. It follows mlx-lm's model-file contract (`ModelArgs`, `Model`, `layers`,
`sanitize`), and `lazarus.models` registers it as `mlx_lm.models.lazyfox`, so mlx-lm's loader, KV
caches, batch generator and LoRA layers handle it like any other family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import BaseModelArgs, create_attention_mask, scaled_dot_product_attention
from mlx_lm.models.activations import swiglu


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_traditional: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        head_dim = args.head_dim
        self.scale = head_dim**-0.5
        self.q_proj = nn.Linear(args.hidden_size, self.n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(args.hidden_size, self.n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(args.hidden_size, self.n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * head_dim, args.hidden_size, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
        self.k_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
        self.rope = nn.RoPE(head_dim, traditional=args.rope_traditional, base=args.rope_theta)

    def __call__(self, x: mx.array, mask: Optional[mx.array] = None, cache: Optional[Any] = None):
        B, L, _ = x.shape
        queries = self.q_norm(self.q_proj(x).reshape(B, L, self.n_heads, -1)).transpose(0, 2, 1, 3)
        keys = self.k_norm(self.k_proj(x).reshape(B, L, self.n_kv_heads, -1)).transpose(0, 2, 1, 3)
        values = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        offset = cache.offset if cache is not None else 0
        queries = self.rope(queries, offset=offset)
        keys = self.rope(keys, offset=offset)
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)
        if cache is None and isinstance(mask, str) and mx.default_device() == mx.cpu:
            output = causal_attention(queries, keys, values, self.scale)
        else:
            output = scaled_dot_product_attention(queries, keys, values, cache=cache, scale=self.scale, mask=mask)
        return self.o_proj(output.transpose(0, 2, 1, 3).reshape(B, L, -1))


#: Queries per block in `causal_attention`.
CAUSAL_BLOCK = 64


def causal_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float) -> mx.array:
    """Causal attention over whole sequences (B, heads, L, head_dim), as MLX's CPU backend should do it.

    MLX's CPU `scaled_dot_product_attention` scores every query against every key, masked ones included,
    and its softmax kernel computes `exp` without SIMD. Here each block of `CAUSAL_BLOCK` queries is scored
    only against the keys up to its end (at 320 tokens ~0.6 of the work), and the softmax is written in
    elementwise ops, which a compiled step (`training.compile`) fuses into kernels that MLX's JIT builds
    with SIMD (`lazarus.platform.setup_native_jit`). The result equals MLX's within float32 rounding. Grouped
    queries share their key/value head as in MLX: query head h reads head h // (heads / kv_heads).
    """
    B, n_heads, L, D = queries.shape
    n_kv = keys.shape[1]
    group = n_heads // n_kv
    outputs = []
    for start in range(0, L, CAUSAL_BLOCK):
        end = min(L, start + CAUSAL_BLOCK)
        q = queries[:, :, start:end].reshape(B, n_kv, group * (end - start), D)
        scores = (q * scale) @ keys[:, :, :end].swapaxes(-1, -2)
        scores = scores.reshape(B, n_kv, group, end - start, end)
        visible = mx.arange(end)[None, :] <= mx.arange(start, end)[:, None]
        scores = mx.where(visible, scores, -mx.inf)
        shifted = scores - mx.stop_gradient(scores.max(axis=-1, keepdims=True))
        weights = mx.exp(shifted)
        weights = weights / weights.sum(axis=-1, keepdims=True)
        out = weights.reshape(B, n_kv, group * (end - start), end) @ values[:, :, :end]
        outputs.append(out.reshape(B, n_heads, end - start, D))
    return outputs[0] if len(outputs) == 1 else mx.concatenate(outputs, axis=2)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class ParallelBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.self_attn = Attention(args)
        self.mlp = MLP(args)

    def __call__(self, x: mx.array, mask: Optional[mx.array] = None, cache: Optional[Any] = None):
        h = self.norm(x)
        return x + self.self_attn(h, mask, cache) + self.mlp(h)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [ParallelBlock(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs: mx.array, cache=None, input_embeddings: Optional[mx.array] = None):
        h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
        if cache is None:
            cache = [None] * len(self.layers)
        mask = create_attention_mask(h, cache[0])
        for layer, layer_cache in zip(self.layers, cache):
            h = layer(h, mask, layer_cache)
        h = self.norm(h)
        if self.args.tie_word_embeddings:
            return self.embed_tokens.as_linear(h)
        return self.lm_head(h)

    def sanitize(self, weights: dict) -> dict:
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
