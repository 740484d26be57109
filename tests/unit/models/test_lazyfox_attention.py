"""LazyFox's CPU attention for whole sequences (blocks of queries against the keys up to their end, softmax
in elementwise ops) gives MLX's causal attention, values and gradients, and the model's full-sequence
forward agrees with its token-by-token forward through a KV cache."""

import mlx.core as mx
import pytest
from mlx_lm.models.cache import make_prompt_cache

from lazarus.models.lazyfox import CAUSAL_BLOCK, causal_attention
from lazarus.models.load import load
from lazarus.models.tiny import init_model


@pytest.mark.parametrize("batch,heads,kv_heads,length,dim", [
    (2, 4, 2, 5 * CAUSAL_BLOCK, 32),      # whole blocks, grouped queries
    (1, 4, 4, 7, 16),                     # shorter than one block
    (3, 8, 2, 2 * CAUSAL_BLOCK + 3, 16),  # a last block of 3 queries
])
def test_causal_attention_equals_mlx_causal_attention_values_and_gradients(batch, heads, kv_heads, length, dim):
    # given queries, keys and values of a grouped-query layer
    mx.random.seed(0)
    q = mx.random.normal((batch, heads, length, dim))
    k = mx.random.normal((batch, kv_heads, length, dim))
    v = mx.random.normal((batch, kv_heads, length, dim))
    weights = mx.random.normal((batch, heads, length, dim))
    scale = dim ** -0.5

    def reference(q, k, v):
        return (mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal") * weights).sum()

    def ours(q, k, v):
        return (causal_attention(q, k, v, scale) * weights).sum()

    # when both compute the attention and its gradients with respect to all three
    expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
    got = causal_attention(q, k, v, scale)
    expected_grads = mx.grad(reference, argnums=(0, 1, 2))(q, k, v)
    got_grads = mx.grad(ours, argnums=(0, 1, 2))(q, k, v)
    # then they agree to float32 rounding
    assert got.shape == expected.shape
    assert mx.allclose(got, expected, atol=1e-5).item()
    for a, b in zip(got_grads, expected_grads):
        assert mx.allclose(a, b, atol=1e-4, rtol=1e-4).item()


def test_full_sequence_forward_equals_the_token_by_token_forward_with_a_kv_cache(tmp_path):
    # given a random-init tiny LazyFox and a sequence longer than two attention blocks
    model, _ = load(init_model("lazyfox", "tiny", tmp_path / "m", seed=1))
    tokens = mx.random.randint(0, 500, (1, 2 * CAUSAL_BLOCK + 5))
    # when it scores the whole sequence at once (the training forward) and one token at a time
    full = model(tokens)
    cache = make_prompt_cache(model)
    stepped = mx.concatenate([model(tokens[:, i:i + 1], cache=cache) for i in range(tokens.shape[1])], axis=1)
    # then the logits agree
    assert mx.allclose(full, stepped, atol=1e-4).item()
