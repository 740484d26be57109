"""Supervised fine-tuning loss: token cross-entropy over the tokens the loss mask selects.

The data layer builds `loss_mask` with prompt tokens set to 0 (only completions are learned) unless
the user asks to train on prompts too.
"""

from __future__ import annotations

import mlx.core as mx

from lazarus.algorithms.logprobs import masked_mean, token_logprobs


def sft_loss(logits: mx.array, targets: mx.array, loss_mask: mx.array) -> tuple[mx.array, mx.array]:
    """Mean over masked tokens of -log p(target): returns (loss, number of masked tokens).

    The token count lets a trainer that accumulates micro-batches weight each by its tokens.
    """
    nll = -token_logprobs(logits, targets)
    return masked_mean(nll, loss_mask), loss_mask.astype(mx.float32).sum()
