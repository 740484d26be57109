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
"""

from __future__ import annotations

import mlx.core as mx
from mlx import nn

from lazarus.algorithms.logprobs import chunked_token_logprobs, linear_token_logprobs
from lazarus.models.value_head import _backbone, hidden_states, logits_from_hidden

#: Positions per chunk: [B, 32, V] float32 is 8 x 32 x 49152 x 4 bytes = 50 MB for SmolLM2 at B = 8.
DEFAULT_CHUNK_SIZE = 32


def policy_token_logprobs(model: nn.Module, inputs: mx.array, targets: mx.array, temperature: float = 1.0,
                          chunk_size: int = DEFAULT_CHUNK_SIZE, with_entropy: bool = False,
                          ) -> tuple[mx.array, mx.array | None]:
    """(logprobs [B,S], entropy [B,S] or None) of `targets` [B,S] under `model` on `inputs` [B,T], S <= T.

    Equal to `token_logprobs(model(inputs), targets, temperature)` (and `token_entropy`) to float
    rounding, for the last S positions. `temperature` must be the one the behaviour logprobs were sampled at.
    """
    if targets.shape[0] != inputs.shape[0] or targets.shape[1] > inputs.shape[1]:
        raise ValueError(f"targets {tuple(targets.shape)} must cover the last positions of inputs "
                         f"{tuple(inputs.shape)}")
    hidden = hidden_states(model, inputs)
    if targets.shape[1] < inputs.shape[1]:
        hidden = hidden[:, inputs.shape[1] - targets.shape[1]:]
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
