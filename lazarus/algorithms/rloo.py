"""RLOO as TRL's `RLOOTrainer` defines it: KL folded into the reward, one importance ratio per sequence.

Ahmadian et al. 2024 ("Back to Basics: Revisiting REINFORCE Style Optimization for RLHF") treat a whole
completion as one action. TRL's trainer follows that:

    r_i   = score_i - beta * sum_t k1_t              (`kl_shaped_sequence_rewards`, k1 = log pi - log pi_ref)
    A_i   = r_i - mean of the other G-1 r_j of i's group          (`rloo_group_advantages`)
    rho_i = exp(sum_t log pi(y_t) - log pi_behavior(y_t))         one ratio per sequence (log clamped to +-20)
    L     = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps))

The token-level form (`rloo_advantages` broadcast over tokens in `policy_gradient_loss`) stays beside it.
"""

from __future__ import annotations

import mlx.core as mx

from lazarus.algorithms.kl import LOG_RATIO_CLAMP
from lazarus.algorithms.logprobs import masked_sum


def rloo_sequence_loss(
    logprobs: mx.array, behavior_logprobs: mx.array, advantages: mx.array, mask: mx.array, epsilon: float = 0.2,
) -> tuple[mx.array, dict[str, mx.array]]:
    """Clipped surrogate with one ratio per sequence: logprobs/behavior/mask [B,T], advantages [B]."""
    if advantages.ndim != 1 or advantages.shape[0] != logprobs.shape[0]:
        raise ValueError(f"advantages must be [B] = [{logprobs.shape[0]}], got {tuple(advantages.shape)}")
    if tuple(behavior_logprobs.shape) != tuple(logprobs.shape) or tuple(mask.shape) != tuple(logprobs.shape):
        raise ValueError("logprobs, behavior_logprobs and mask must have one shape [B,T]")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    log_ratio = masked_sum(logprobs - behavior_logprobs, mask, axis=-1)
    ratio = mx.exp(mx.clip(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    advantages = advantages.astype(mx.float32)
    unclipped = -advantages * ratio
    clipped = -advantages * mx.clip(ratio, 1.0 - epsilon, 1.0 + epsilon)
    losses = mx.maximum(unclipped, clipped)
    ratio = mx.stop_gradient(ratio)
    metrics = {
        "clip_fraction": (mx.stop_gradient(clipped) > mx.stop_gradient(unclipped)).astype(mx.float32).mean(),
        "ratio_mean": ratio.mean(),
        "ratio_max": ratio.max(),
    }
    return losses.mean(), metrics
