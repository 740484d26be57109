"""PPO pieces on GAE advantages (Schulman et al. 2017, "Proximal Policy Optimization Algorithms").

    policy:  L^CLIP = -mean_t min(ratio_t A_t, clip(ratio_t, 1 - eps, 1 + eps) A_t),  ratio = pi / pi_old
    value:   L^V    = 0.5 * mean_t max((V_t - R_t)^2, (V_old + clip(V_t - V_old, -c, c) - R_t)^2)
    total:   L = L^CLIP + c_v L^V - c_e * entropy_bonus

Means are over masked (completion) tokens by default; `loss_agg_mode` picks verl's other aggregations
(`aggregate_loss`) for the policy and the value loss alike. `clip_ratio_c` is verl's dual-clip.
approx_kl tells the trainer when the policy has moved too
far from the one that sampled the batch and the remaining PPO epochs should stop.
"""

from __future__ import annotations

import mlx.core as mx

from lazarus.algorithms.kl import kl_penalty
from lazarus.algorithms.logprobs import aggregate_loss, masked_mean
from lazarus.algorithms.policy_gradient import policy_gradient_loss


def ppo_policy_loss(
    logprobs: mx.array,
    old_logprobs: mx.array,
    advantages: mx.array,
    mask: mx.array,
    clip_range: float = 0.2,
    clip_range_high: float | None = None,
    *,
    loss_agg_mode: str = "token-mean",
    clip_ratio_c: float | None = None,
    ref_logprobs: mx.array | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    max_completion_length: int | None = None,
) -> tuple[mx.array, dict[str, mx.array]]:
    """Clipped surrogate; `clip_range_high` (default = clip_range) clips the upper side; with `beta` the
    KL to `ref_logprobs` is added in the loss (rl.kl_placement "loss"). `max_completion_length` is the
    divisor of seq-mean-token-sum-norm (default: the columns given)."""
    return policy_gradient_loss(
        logprobs, old_logprobs, advantages, mask,
        epsilon_low=clip_range,
        epsilon_high=clip_range if clip_range_high is None else clip_range_high,
        loss_agg_mode=loss_agg_mode, clip_ratio_c=clip_ratio_c,
        ref_logprobs=ref_logprobs, beta=beta, kl_estimator=kl_estimator,
        max_completion_length=max_completion_length,
    )


def value_loss(
    values: mx.array,
    old_values: mx.array,
    returns: mx.array,
    mask: mx.array,
    clip_range_value: float | None = 0.2,
    *,
    loss_agg_mode: str = "token-mean",
    max_completion_length: int | None = None,
) -> tuple[mx.array, dict[str, mx.array]]:
    """0.5 * masked mean of the squared error to `returns`, pessimistic over the clipped value
    (the critic may move at most `clip_range_value` from `old_values` per update; None: no clipping).
    `max_completion_length` as in `ppo_policy_loss`."""
    squared_error = mx.square(values - returns)
    if clip_range_value is None:
        loss_per_token, clipped = squared_error, mx.zeros_like(squared_error)
    else:
        clipped_values = old_values + mx.clip(values - old_values, -clip_range_value, clip_range_value)
        clipped_squared_error = mx.square(clipped_values - returns)
        loss_per_token = mx.maximum(squared_error, clipped_squared_error)
        clipped = (clipped_squared_error > squared_error).astype(mx.float32)
    metrics = {
        "value_clip_fraction": masked_mean(clipped, mask),
        "value_error": masked_mean(mx.stop_gradient(squared_error), mask),
    }
    return 0.5 * aggregate_loss(loss_per_token, mask, loss_agg_mode, normalizer=max_completion_length), metrics


def entropy_bonus(entropy: mx.array, mask: mx.array) -> mx.array:
    """Mean token entropy over the mask; the trainer subtracts coef * this from the loss."""
    return masked_mean(entropy, mask)


def approx_kl(logprobs: mx.array, old_logprobs: mx.array, mask: mx.array) -> mx.array:
    """k3 estimate of KL(pi_old || pi) from tokens sampled by pi_old: mean of (r - 1) - log r, r = pi/pi_old."""
    return masked_mean(kl_penalty(old_logprobs, logprobs, "k3"), mask)
