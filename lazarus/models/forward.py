"""The learner's forward pass: per-token log-probabilities (and entropies) of given tokens under a policy.

`policy_token_logprobs(model, inputs, targets, temperature)` runs the model up to its last hidden states
once, then the LM head and the selective log-softmax chunk by chunk over the sequence
(`lazarus.algorithms.logprobs.chunked_token_logprobs`), so neither the full [B, T, V] logits nor any
other [B, T, V] float32 array exists at once, in the forward pass or in the backward pass (each chunk
is gradient-checkpointed: its logits are recomputed from its hidden states). It is differentiable and
runs under `nn.value_and_grad` and `mx.compile`. Use it for the policy and the reference alike.
"""

from __future__ import annotations

import mlx.core as mx
from mlx import nn

from lazarus.algorithms.logprobs import chunked_token_logprobs
from lazarus.models.value_head import hidden_states, logits_from_hidden

#: Positions per chunk: [B, 128, V] float32 is 8 x 128 x 49152 x 4 bytes = 200 MB for SmolLM2 at B=8.
DEFAULT_CHUNK_SIZE = 128


def policy_token_logprobs(model: nn.Module, inputs: mx.array, targets: mx.array, temperature: float = 1.0,
                          chunk_size: int = DEFAULT_CHUNK_SIZE, with_entropy: bool = False,
                          ) -> tuple[mx.array, mx.array | None]:
    """(logprobs [B,T], entropy [B,T] or None) of `targets` under `model` on `inputs`, at `temperature`.

    Equal to `token_logprobs(model(inputs), targets, temperature)` (and `token_entropy`) to float
    rounding. `temperature` must be the one the behaviour logprobs were sampled at.
    """
    hidden = hidden_states(model, inputs)
    return chunked_token_logprobs(
        hidden, targets, lambda h: logits_from_hidden(model, h), temperature=temperature, chunk_size=chunk_size,
        with_entropy=with_entropy, checkpoint=lambda fn: nn.utils.checkpoint(model, fn))
