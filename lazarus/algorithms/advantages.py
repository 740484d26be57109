"""Advantage estimators: how much better a sampled completion (or token) was than expected.

Sequence-level estimators take one scalar reward per completion, laid out group-contiguous: the
`group_size` completions sampled for one prompt sit next to each other, so `rewards.reshape(-1, G)`
has one prompt per row. A group whose rewards are all equal carries no learning signal: its
advantages are exactly 0 (never NaN, never rounding noise).

- group-normalized (GRPO; Shao et al. 2024, DeepSeekMath, sec. 4.1.2): A_i = (r_i - mean_g) / (std_g + eps),
  or r_i - mean_g without std scaling (Dr. GRPO; Liu et al. 2025, "Understanding R1-Zero-Like Training").
- RLOO (Ahmadian et al. 2024, "Back to Basics"): A_i = r_i - mean of the other G-1 rewards of the group.
- REINFORCE++ (Hu 2025): advantages normalised over the whole batch; "-baseline" subtracts the group
  mean first.
- GAE (Schulman et al. 2016) for PPO: token-level, from per-token rewards and critic values.
"""

from __future__ import annotations

import mlx.core as mx

from lazarus.algorithms.logprobs import masked_mean


def _groups(rewards: mx.array, group_size: int) -> mx.array:
    """rewards [N] -> [N / group_size, group_size] in float32; checks the layout."""
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(f"rewards length {rewards.shape[0]} is not a multiple of group_size={group_size}")
    return rewards.astype(mx.float32).reshape(-1, group_size)


def _zero_where_constant(advantages: mx.array, values: mx.array, axis: int | None) -> mx.array:
    """Exact zeros where `values` is constant along `axis` (the mean there may be off by rounding)."""
    constant = values.max(axis=axis, keepdims=True) == values.min(axis=axis, keepdims=True)
    return mx.where(constant, 0.0, advantages)


def group_normalized_advantages(
    rewards: mx.array, group_size: int, scale_by_std: bool = True, eps: float = 1e-4
) -> mx.array:
    """GRPO: A_i = (r_i - mean(group)) / (std(group) + eps), std with Bessel's correction (as TRL).

    `scale_by_std=False` keeps only the mean baseline (Dr. GRPO: std scaling biases toward
    questions that are too easy or too hard).
    """
    grouped = _groups(rewards, group_size)
    advantages = grouped - grouped.mean(axis=1, keepdims=True)
    if scale_by_std and group_size > 1:
        advantages = advantages / (mx.std(grouped, axis=1, keepdims=True, ddof=1) + eps)
    return _zero_where_constant(advantages, grouped, axis=1).reshape(-1)


def rloo_advantages(rewards: mx.array, group_size: int) -> mx.array:
    """RLOO: A_i = r_i - (sum(group) - r_i) / (G - 1), the leave-one-out baseline."""
    if group_size < 2:
        raise ValueError(f"RLOO needs group_size >= 2 (a baseline from the others), got {group_size}")
    grouped = _groups(rewards, group_size)
    baseline = (grouped.sum(axis=1, keepdims=True) - grouped) / (group_size - 1)
    return _zero_where_constant(grouped - baseline, grouped, axis=1).reshape(-1)


def reinforce_pp_advantages(rewards: mx.array, group_size: int | None = None, eps: float = 1e-4) -> mx.array:
    """REINFORCE++: A = (r - mean_batch) / (std_batch + eps), population std over the batch.

    With `group_size` (REINFORCE++-baseline) the group mean is subtracted from each reward first,
    then the result is normalised over the whole batch.
    """
    grouped = _groups(rewards, 1 if group_size is None else group_size)
    if group_size is not None:
        grouped = _zero_where_constant(grouped - grouped.mean(axis=1, keepdims=True), grouped, axis=1)
    centered = grouped.reshape(-1)
    advantages = (centered - centered.mean()) / (mx.std(centered) + eps)
    return _zero_where_constant(advantages, centered, axis=None)


def gae(
    rewards: mx.array, values: mx.array, mask: mx.array, gamma: float, lam: float
) -> tuple[mx.array, mx.array]:
    """Generalized Advantage Estimation over tokens: returns (advantages, returns), each [B,T].

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t  (the critic's regression target)

    Only tokens with mask 1 take part: a masked token (padding, or an env/tool token in a multi-turn
    episode) is skipped, so the next valid token's value and advantage pass through it, and the
    value after the last valid token is 0 (the episode ends there). Rewards must sit on valid
    tokens (a sequence reward on the last one). Masked positions come back as 0.
    """
    rewards, values = rewards.astype(mx.float32), values.astype(mx.float32)
    valid = mask.astype(mx.bool_)
    next_value = mx.zeros(rewards.shape[0], dtype=mx.float32)
    next_advantage = mx.zeros(rewards.shape[0], dtype=mx.float32)
    advantages = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        next_value = mx.where(valid[:, t], values[:, t], next_value)
        next_advantage = mx.where(valid[:, t], advantage, next_advantage)
        advantages.append(mx.where(valid[:, t], advantage, 0.0))
    advantages = mx.stack(advantages[::-1], axis=1)
    returns = mx.where(valid, advantages + values, 0.0)
    return advantages, returns


def whiten(x: mx.array, mask: mx.array, shift_mean: bool = True, eps: float = 1e-8) -> mx.array:
    """(x - mean) / std over the masked entries (population std); masked entries come back as 0.

    `shift_mean=False` rescales but keeps the mean (PPO implementations whiten rewards that way).
    """
    mean = masked_mean(x, mask)
    variance = masked_mean(mx.square(x - mean), mask)
    whitened = (x - mean) * mx.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return mx.where(mask.astype(mx.bool_), whitened, 0.0)
