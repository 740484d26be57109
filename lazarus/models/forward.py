"""The learner's forward pass: per-token log-probabilities (and entropies) of given tokens under a policy.

`policy_token_logprobs(model, inputs, targets, temperature)` runs the model up to its last hidden states
once, then the LM head and the selective log-softmax chunk by chunk over the sequence, so neither the full
[B, T, V] logits nor any other [B, T, V] float32 array exists at once, in the forward pass or in the
backward pass. For a plain float LM head (every family in `PLAIN_HEAD_FAMILIES`, tied or not) the
gradient is written out per chunk (`lazarus.algorithms.logprobs.linear_token_logprobs`); any other head
(quantized, adapted) goes through `chunked_token_logprobs` with each chunk gradient-checkpointed. It is
differentiable and runs under `nn.value_and_grad` and `mx.compile`. Use it for the policy and the
reference alike; ask for the entropy only where it is used (it costs one more pass over each chunk).

`targets` may be shorter than `inputs`: they are then the targets of the last positions only, and the LM
head runs on those alone. A learner passes the completion columns (the prompt's are masked out anyway):
with SmolLM2's 49,152-token head, the head is half the forward pass of a 52-token prompt + 24-token answer.

Group prefix sharing (`prefix=SharedPrefix(...)`): the `n` completions of a GRPO group share their prompt, so
the prompt's tokens but the last run once per group (left-padded to one length, as the engine's prefill), and
each completion row runs only its own tokens against its group's keys and values, as a KV cache holds them.
The numbers are those of whole rows to float rounding (padded keys are masked, and rotary positions count
from each row's first real token), in the forward and the backward pass alike. A 17-token prompt with 32-token
completions in groups of 8 runs 29% fewer tokens; a 150-token prompt with 100-token answers, 52% fewer.
"""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx
from mlx import nn
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import make_prompt_cache

from lazarus.algorithms.logprobs import chunked_token_logprobs, linear_token_logprobs
from lazarus.models.value_head import _backbone, hidden_states, logits_from_hidden

#: Positions per chunk: [B, 32, V] float32 is 8 x 32 x 49152 x 4 bytes = 50 MB for SmolLM2 at B = 8.
DEFAULT_CHUNK_SIZE = 32


class SharedPrefix(NamedTuple):
    """The prompts of a batch's groups, once each: row i of the batch continues prompt `rows[i]`."""

    tokens: mx.array  # [G, P] each group's prompt but its last token, left-padded to P
    left_padding: mx.array  # [G] pad tokens in front of each
    rows: mx.array  # [N] the group of each batch row


def cache_kinds(model: nn.Module) -> set[str]:
    """The class names of the KV caches `model`'s layers use ("KVCache", "RotatingKVCache", "MambaCache"...)."""
    return {type(c).__name__ for c in make_prompt_cache(model)}


def shares_prefix(model: nn.Module) -> bool:
    """Whether `model` can run a `SharedPrefix`: every layer attends through a plain KV cache (as the engine
    needs; sliding-window, recurrent and quantized caches cannot be shared this way)."""
    return cache_kinds(model) == {"KVCache"}


class _PrefixCache:
    """One layer's KV cache in a shared-prefix forward: the first pass stores the prompts' keys and values,
    `expand` gives each row its group's, and the second pass attends to them and to the row's own.

    Differentiable: nothing is written in place, so gradients reach the prompts' keys from every row."""

    def __init__(self, left_padding: mx.array):
        self.left_padding = left_padding
        self.offset = -left_padding  # rotary positions count from each row's first real token
        self.keys = self.values = None
        self.prefix_length = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        if self.keys is None:
            self.keys, self.values, self.prefix_length = keys, values, keys.shape[2]
            return keys, values
        return mx.concatenate([self.keys, keys], axis=2), mx.concatenate([self.values, values], axis=2)

    def expand(self, rows: mx.array) -> None:
        self.keys, self.values = self.keys[rows], self.values[rows]
        self.left_padding = self.left_padding[rows]
        self.offset = self.prefix_length - self.left_padding

    def make_mask(self, N: int, return_array: bool = False, **kwargs) -> mx.array:
        return create_causal_mask(N, offset=self.prefix_length if self.keys is not None else 0,
                                  left_padding=self.left_padding, **kwargs)


def prefix_hidden_states(model: nn.Module, prefix: SharedPrefix, inputs: mx.array) -> mx.array:
    """The last hidden states [N, S, hidden] of each row's `inputs` [N, S] after its group's prompt."""
    caches = [_PrefixCache(prefix.left_padding) for _ in model.layers]
    hidden_states(model, prefix.tokens, caches)  # fills the caches; its hidden states are not needed
    for cache in caches:
        cache.expand(prefix.rows)
    return hidden_states(model, inputs, caches)


def policy_token_logprobs(model: nn.Module, inputs: mx.array, targets: mx.array, temperature: float = 1.0,
                          chunk_size: int = DEFAULT_CHUNK_SIZE, with_entropy: bool = False,
                          prefix: SharedPrefix | None = None) -> tuple[mx.array, mx.array | None]:
    """(logprobs [B,S], entropy [B,S] or None) of `targets` [B,S] under `model` on `inputs` [B,T], S <= T.

    Equal to `token_logprobs(model(inputs), targets, temperature)` (and `token_entropy`) to float
    rounding, for the last S positions. `temperature` must be the one the behaviour logprobs were sampled at.
    With `prefix`, each row of `inputs` continues its group's prompt (see `SharedPrefix`).
    """
    if targets.shape[0] != inputs.shape[0] or targets.shape[1] > inputs.shape[1]:
        raise ValueError(f"targets {tuple(targets.shape)} must cover the last positions of inputs "
                         f"{tuple(inputs.shape)}")
    hidden = last_hidden_states(model, inputs, targets.shape[1], prefix)
    return hidden_token_logprobs(model, hidden, targets, temperature, chunk_size, with_entropy)


def last_hidden_states(model: nn.Module, inputs: mx.array, positions: int,
                       prefix: SharedPrefix | None = None) -> mx.array:
    """The last hidden states [B, positions, hidden] of `inputs` [B, T] (each row after its group's prompt,
    with `prefix`): what `hidden_token_logprobs` and a value head read."""
    hidden = hidden_states(model, inputs) if prefix is None else prefix_hidden_states(model, prefix, inputs)
    return hidden[:, inputs.shape[1] - positions:] if positions < inputs.shape[1] else hidden


def hidden_token_logprobs(model: nn.Module, hidden: mx.array, targets: mx.array, temperature: float = 1.0,
                          chunk_size: int = DEFAULT_CHUNK_SIZE,
                          with_entropy: bool = False) -> tuple[mx.array, mx.array | None]:
    """(logprobs, entropy or None) [B, S] of `targets` [B, S] from the hidden states [B, S, hidden] that
    predict them: `model`'s LM head and the selective log-softmax, chunk by chunk (see the module's note)."""
    head = _plain_head(model)
    if head is not None:
        weight, trainable = head
        scaling = getattr(model, "logits_scaling", None) or 1.0  # granite divides its logits
        return linear_token_logprobs(hidden, weight, targets, temperature * scaling, chunk_size=chunk_size,
                                     with_entropy=with_entropy, weight_grad=trainable)
    return chunked_token_logprobs(
        hidden, targets, lambda h: logits_from_hidden(model, h), temperature=temperature, chunk_size=chunk_size,
        with_entropy=with_entropy, checkpoint=lambda fn: nn.utils.checkpoint(model, fn))


def _plain_head(model: nn.Module) -> tuple[mx.array, bool] | None:
    """(LM head weight [V, H], whether it is trainable) when the head is a plain float matrix, else None."""
    logits_from_hidden(model, mx.zeros((1, 1, model.args.hidden_size)))  # refuses unknown families
    if "lm_head" in model:
        layer = model["lm_head"]
        plain = type(layer) is nn.Linear and "bias" not in layer
    else:
        layer = _backbone(model).embed_tokens
        plain = type(layer) is nn.Embedding
    if not plain:
        return None
    return layer.weight, "weight" in layer.trainable_parameters()
