"""Token log-probabilities, entropies and masked reductions: the shared vocabulary of every loss.

Callers align `logits[:, t]` with `targets[:, t]` (the token that position t predicts); the shift
from input ids happens where the batch is built, not here. Masks are 0/1 (any dtype) and mark the
tokens that count: completion tokens produced by the model, never prompt, padding or tool tokens.
"""

from __future__ import annotations

import mlx.core as mx


def _scaled_logits(logits: mx.array, temperature: float) -> mx.array:
    """logits / temperature in float32 (bf16 logits lose too much in the log-sum-exp)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.astype(mx.float32)
    return logits / temperature if temperature != 1.0 else logits


def token_logprobs(logits: mx.array, targets: mx.array, temperature: float = 1.0) -> mx.array:
    """log softmax(logits / temperature)[target] per position: [B,T,V], [B,T] -> [B,T] float32.

    `temperature` must match the one used at sampling time so the ratio against behavior logprobs is
    between the same distributions.
    """
    logits = _scaled_logits(logits, temperature)
    # Gather first, then subtract the normaliser: never materialises a second [B,T,V] array.
    picked = mx.take_along_axis(logits, targets[..., None].astype(mx.int32), axis=-1).squeeze(-1)
    return picked - mx.logsumexp(logits, axis=-1)


def token_entropy(logits: mx.array, temperature: float = 1.0) -> mx.array:
    """Entropy H = -sum_v p_v log p_v of the next-token distribution at each position: [B,T,V] -> [B,T]."""
    logits = _scaled_logits(logits, temperature)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return -(mx.exp(logp) * logp).sum(axis=-1)


def masked_sum(x: mx.array, mask: mx.array, axis: int | None = None) -> mx.array:
    """sum(x * mask) over `axis` (all axes when None); masked-out entries may hold inf or NaN."""
    return mx.where(mask.astype(mx.bool_), x, 0.0).sum(axis=axis)


def masked_mean(x: mx.array, mask: mx.array, axis: int | None = None) -> mx.array:
    """sum(x * mask) / max(sum(mask), 1): an empty mask gives 0, never NaN."""
    count = mask.astype(mx.float32).sum(axis=axis)
    return masked_sum(x, mask, axis) / mx.maximum(count, 1.0)


def sequence_logprobs(token_logprobs: mx.array, mask: mx.array) -> mx.array:
    """log pi(completion | prompt) = sum of the masked (completion) token logprobs: [B,T] -> [B]."""
    return masked_sum(token_logprobs, mask, axis=-1)


LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregate_loss(loss: mx.array, mask: mx.array, mode: str = "token-mean",
                   normalizer: float | None = None) -> mx.array:
    """A [B,T] per-token loss to a scalar, by verl's `agg_loss` modes (verl/trainer/ppo/core_algos.py):

    - token-mean:              sum over valid tokens / their number (DAPO; TRL "dapo"/"bnpo")
    - seq-mean-token-sum:      mean over sequences of each sequence's token sum
    - seq-mean-token-mean:     mean over sequences of each sequence's token mean (GRPO; TRL "grpo")
    - seq-mean-token-sum-norm: sum over all valid tokens / `normalizer` (default T, the padded length;
                               Dr. GRPO: keep it a constant such as the maximum completion length)

    Sequences without a valid token count as 0 in the seq-mean modes, as in verl.
    """
    if mode == "token-mean":
        return masked_mean(loss, mask)
    if mode == "seq-mean-token-sum":
        return masked_sum(loss, mask, axis=-1).mean()
    if mode == "seq-mean-token-mean":
        return masked_mean(loss, mask, axis=-1).mean()
    if mode == "seq-mean-token-sum-norm":
        return masked_sum(loss, mask) / float(normalizer or loss.shape[-1])
    raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {mode!r}")
