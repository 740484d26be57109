"""Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL
Divergence", 2020, http://joschu.net/blog/kl-approx.html).

With log r = log pi_ref(y) - log pi(y) for a token y sampled from pi:
    k1 = -log r                  unbiased, high variance, can be negative
    k2 = (log r)^2 / 2           biased, low variance, never negative
    k3 = (r - 1) - log r         unbiased, low variance, never negative (GRPO's choice, DeepSeekMath eq. 4)
    abs = |log r|                verl `kl_penalty(..., "abs")`
    low_var_kl = clip(k3, -10, 10) with log r clamped to [-20, 20] first: verl's default
                                 (`kl_penalty(..., "low_var_kl")`, verl/trainer/ppo/core_algos.py)

Where the KL enters (`kl_in_reward`): GRPO adds beta * KL to the loss (DeepSeekMath eq. 3); PPO/RLHF
(Ziegler et al. 2019; InstructGPT; verl `use_kl_in_reward`, TRL PPO/RLOO) subtracts it from the
reward, so it shapes the advantages instead: r_t <- r_t - beta * KL_t, the sequence score on the last
token. `kl_shaped_sequence_rewards` is the sequence-level form (TRL RLOO: r - beta * sum_t k1_t).
"""

from __future__ import annotations

import mlx.core as mx

KL_ESTIMATORS = ("k1", "k2", "k3", "abs", "low_var_kl")
LOG_RATIO_CLAMP = 20.0  # verl clamps log-ratios to +-20 before exp


def kl_penalty(logprobs: mx.array, ref_logprobs: mx.array, estimator: str = "k3") -> mx.array:
    """Per-token KL estimate of the policy (`logprobs`, the sampling side) from the reference."""
    log_r = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r * log_r
    if estimator == "k3":
        # expm1 keeps r - 1 exact near r = 1; the clamp removes the last rounding below 0.
        return mx.maximum(mx.expm1(log_r) - log_r, 0.0)
    if estimator == "abs":
        return mx.abs(log_r)
    if estimator == "low_var_kl":
        log_r = mx.clip(log_r, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return mx.clip(mx.expm1(log_r) - log_r, -10.0, 10.0)
    raise ValueError(f"kl estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def kl_shaped_token_rewards(
    rewards: mx.array, logprobs: mx.array, ref_logprobs: mx.array, mask: mx.array, beta: float,
    estimator: str = "k1",
) -> mx.array:
    """KL in the reward, per token (verl `apply_kl_penalty`): [B] scores -> [B,T] token rewards.

    r_t = -beta * KL_t on every valid token, plus the sequence score on the last valid one.
    """
    valid = mask.astype(mx.bool_)
    positions = mx.arange(mask.shape[1])[None, :]
    last = mx.where(valid, positions, -1).max(axis=1, keepdims=True)
    kl = mx.where(valid, kl_penalty(logprobs, ref_logprobs, estimator), 0.0)
    score = mx.where(positions == last, rewards.astype(mx.float32)[:, None], 0.0)
    return score - beta * kl


def kl_shaped_sequence_rewards(
    rewards: mx.array, logprobs: mx.array, ref_logprobs: mx.array, mask: mx.array, beta: float,
    estimator: str = "k1",
) -> mx.array:
    """KL in the reward, per sequence (TRL RLOO, `rlhf_reward = scores - kl_coef * kl.sum(1)`): [B] -> [B]."""
    kl = mx.where(mask.astype(mx.bool_), kl_penalty(logprobs, ref_logprobs, estimator), 0.0)
    return rewards.astype(mx.float32) - beta * kl.sum(axis=-1)
