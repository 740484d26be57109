"""Advantage estimators: how much better a sampled completion (or token) was than expected.

Sequence-level estimators take one scalar reward per completion, laid out group-contiguous: the
`group_size` completions sampled for one prompt sit next to each other, so `rewards.reshape(-1, G)`
has one prompt per row. A group whose rewards are all equal carries no learning signal: its
advantages are exactly 0 (never NaN, never rounding noise).

- group-normalized (GRPO; Shao et al. 2024, DeepSeekMath, sec. 4.1.2): A_i = (r_i - mean_g) / (std_g + eps),
  or r_i - mean_g without std scaling (Dr. GRPO; Liu et al. 2025, "Understanding R1-Zero-Like Training").
- RLOO (Ahmadian et al. 2024, "Back to Basics"): A_i = r_i - mean of the other G-1 rewards of the group.
- REINFORCE++ (Hu 2025): advantages normalised over the whole batch; "-baseline" subtracts the group
  mean first. `reinforce_pp_token_advantages` is verl's / OpenRLHF's form: the (discounted) return is
  broadcast to every completion token and whitened over all tokens of the batch, so a long completion
  weighs as many tokens as it has.
- GAE (Schulman et al. 2016) for PPO: token-level, from per-token rewards and critic values; `dones`
  ends an episode inside a sequence (multi-turn), so no value or advantage flows across it.

Groups by id: `group_advantages`, `rloo_group_advantages` and `reinforce_pp_token_advantages` take an
explicit group id per completion (verl's `index`), never their position, so a batch assembled from
several actors in any order gets the same advantages. A group with fewer (or more) members than
`group_size` is an error naming the group: a group assembled short would silently change the baseline.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

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


SCALE_REWARDS = ("group", "batch", "none")


def group_normalized_advantages(
    rewards: mx.array, group_size: int, scale_by_std: bool | str = True, eps: float = 1e-4
) -> mx.array:
    """GRPO: A_i = (r_i - mean(group)) / (std + eps), std with Bessel's correction (as TRL).

    `scale_by_std` is TRL's `scale_rewards`: "group" (or True) divides by the group's std, "batch" by
    the std of all rewards in the batch (more robust to groups of near-equal rewards, Liu et al. 2025
    "Part I: Tricks or Traps?"), "none" (or False) keeps only the mean baseline (Dr. GRPO: std scaling
    biases toward questions that are too easy or too hard).
    """
    scale = _scale_mode(scale_by_std)
    grouped = _groups(rewards, group_size)
    advantages = grouped - grouped.mean(axis=1, keepdims=True)
    if scale == "group" and group_size > 1:
        advantages = advantages / (mx.std(grouped, axis=1, keepdims=True, ddof=1) + eps)
    elif scale == "batch" and grouped.size > 1:
        advantages = advantages / (mx.std(grouped.reshape(-1), ddof=1) + eps)
    return _zero_where_constant(advantages, grouped, axis=1).reshape(-1)


def _scale_mode(scale: bool | str) -> str:
    if scale is True or scale is False:
        return "group" if scale else "none"
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS} (or a bool), got {scale!r}")
    return scale


def group_index(group_ids, group_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(one-hot membership [N, n_groups] float32, the distinct ids) of a 1-D array of group ids.

    With `group_size`, every group must have exactly that many members: a short group (some of its
    completions were lost or not yet assembled) or an over-full one (two groups sharing an id) raises
    ValueError naming the group.
    """
    ids = np.asarray(group_ids)
    if ids.ndim != 1:
        raise ValueError(f"group_ids must be 1-D [N], got shape {ids.shape}")
    distinct, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    if group_size is not None:
        for group, count in zip(distinct, counts):
            if count != group_size:
                kind = "short" if count < group_size else "over-full: two groups share this id?"
                raise ValueError(f"group {group.item()!r} has {count} completions, expected group_size={group_size} "
                                 f"({kind})")
    membership = np.zeros((ids.shape[0], distinct.shape[0]), np.float32)
    membership[np.arange(ids.shape[0]), inverse] = 1.0
    return membership, distinct


def _group_statistics(rewards: mx.array, membership: mx.array) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """Per completion: its group's (mean, Bessel std, size, whether the group's rewards are all equal)."""
    counts = membership.sum(axis=0)
    means = (membership.T @ rewards) / counts
    mean_of_row = membership @ means
    squares = membership.T @ mx.square(rewards - mean_of_row)
    std_of_row = membership @ mx.sqrt(squares / mx.maximum(counts - 1.0, 1.0))
    big = mx.array(np.finfo(np.float32).max)
    group_max = mx.where(membership > 0, rewards[:, None], -big).max(axis=0)
    group_min = mx.where(membership > 0, rewards[:, None], big).min(axis=0)
    constant_of_row = (membership @ (group_max == group_min).astype(mx.float32)) > 0
    return mean_of_row, std_of_row, membership @ counts, constant_of_row


def _check_rewards(rewards: mx.array, group_ids) -> mx.array:
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if len(np.asarray(group_ids)) != rewards.shape[0]:
        raise ValueError(f"group_ids has {len(np.asarray(group_ids))} entries for {rewards.shape[0]} rewards")
    return rewards.astype(mx.float32)


def group_advantages(
    rewards: mx.array, group_ids, *, group_size: int | None = None, scale_rewards: str = "group",
    eps: float = 1e-4,
) -> mx.array:
    """GRPO / Dr. GRPO advantages with groups given by id (verl `compute_grpo_outcome_advantage`'s `index`).

    A_i = (r_i - mean of i's group) / (std + eps), std per `scale_rewards` ("group": the group's Bessel
    std, "batch": the batch's, "none": 1), exactly 0 where a group's rewards are all equal.
    """
    rewards = _check_rewards(rewards, group_ids)
    scale = _scale_mode(scale_rewards)
    membership, _ = group_index(group_ids, group_size)
    mean, std, _, constant = _group_statistics(rewards, mx.array(membership))
    advantages = rewards - mean
    if scale == "group":
        advantages = advantages / (std + eps)
    elif scale == "batch" and rewards.size > 1:
        advantages = advantages / (mx.std(rewards, ddof=1) + eps)
    return mx.where(constant, 0.0, advantages)


def rloo_group_advantages(rewards: mx.array, group_ids, *, group_size: int | None = None) -> mx.array:
    """RLOO with groups by id: A_i = r_i - mean of the other members of i's group (each group >= 2)."""
    rewards = _check_rewards(rewards, group_ids)
    membership, distinct = group_index(group_ids, group_size)
    counts = membership.sum(axis=0)
    if (counts < 2).any():
        raise ValueError(f"RLOO needs >= 2 completions per group; group {distinct[np.argmin(counts)].item()!r} has 1")
    mean, _, size, constant = _group_statistics(rewards, mx.array(membership))
    baseline = (mean * size - rewards) / (size - 1.0)
    return mx.where(constant, 0.0, rewards - baseline)


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


def reinforce_pp_token_advantages(
    rewards: mx.array, mask: mx.array, *, group_ids=None, group_size: int | None = None, gamma: float = 1.0,
    eps: float = 1e-8,
) -> mx.array:
    """REINFORCE++ as verl (`compute_reinforce_plus_plus_outcome_advantage`) and OpenRLHF: [B] -> [B,T].

    The sequence reward sits on each completion's last valid token; the return G_t = sum_{k>=t}
    gamma^(k-t) r_k reaches every valid token, and the returns are whitened (`whiten`: Bessel std) over
    all valid tokens of the batch. With `group_ids` (REINFORCE++-baseline, verl
    `compute_reinforce_plus_plus_baseline_outcome_advantage`) each reward first has its group's mean
    subtracted, and the centred score is broadcast to the tokens (no discount) before whitening.
    """
    valid = mask.astype(mx.bool_)
    if rewards.ndim != 1 or rewards.shape[0] != mask.shape[0]:
        raise ValueError(f"rewards must be [B] with B = mask rows {mask.shape[0]}, got {tuple(rewards.shape)}")
    rewards = rewards.astype(mx.float32)
    if group_ids is not None:
        rewards = _check_rewards(rewards, group_ids)
        membership, _ = group_index(group_ids, group_size)
        mean, _, _, constant = _group_statistics(rewards, mx.array(membership))
        returns = mx.where(constant, 0.0, rewards - mean)[:, None] * valid
    else:
        steps_to_end = masked_count_after(valid).astype(mx.float32)  # discount over valid tokens only
        returns = mx.where(valid, rewards[:, None] * mx.power(gamma, steps_to_end), 0.0)
    big = mx.array(np.finfo(np.float32).max)
    constant = mx.where(valid, returns, -big).max() == mx.where(valid, returns, big).min()
    return mx.where(constant, 0.0, whiten(returns, mask, eps=eps))  # equal returns: exact zeros, not noise


def masked_count_after(valid: mx.array) -> mx.array:
    """Per position, how many valid positions come after it in its row: [B,T] bool -> [B,T] int32."""
    after = mx.cumsum(valid.astype(mx.int32)[:, ::-1], axis=1)[:, ::-1]
    return after - valid.astype(mx.int32)


def gae(
    rewards: mx.array, values: mx.array, mask: mx.array, gamma: float, lam: float, dones: mx.array | None = None
) -> tuple[mx.array, mx.array]:
    """Generalized Advantage Estimation over tokens: returns (advantages, returns), each [B,T].

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t  (the critic's regression target)

    Only tokens with mask 1 take part: a masked token (padding, or an env/tool token in a multi-turn
    episode) is skipped, so the next valid token's value and advantage pass through it, and the
    value after the last valid token is 0 (the episode ends there). Rewards must sit on valid
    tokens (a sequence reward on the last one). Masked positions come back as 0.

    `dones` [B,T] (1 on the last token of an episode, as gymnasium's `terminated`) ends an episode
    inside a sequence: at a done token V_{t+1} and A_{t+1} are 0, as after the sequence's last token,
    so several episodes packed in one row (multi-turn, or one row per actor stream) stay independent.
    """
    rewards, values = rewards.astype(mx.float32), values.astype(mx.float32)
    valid = mask.astype(mx.bool_)
    if dones is not None and tuple(dones.shape) != tuple(rewards.shape):
        raise ValueError(f"dones has shape {tuple(dones.shape)}, expected {tuple(rewards.shape)} like rewards")
    next_value = mx.zeros(rewards.shape[0], dtype=mx.float32)
    next_advantage = mx.zeros(rewards.shape[0], dtype=mx.float32)
    advantages = []
    for t in reversed(range(rewards.shape[1])):
        if dones is not None:
            ends = dones[:, t].astype(mx.bool_) & valid[:, t]
            next_value = mx.where(ends, 0.0, next_value)
            next_advantage = mx.where(ends, 0.0, next_advantage)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        next_value = mx.where(valid[:, t], values[:, t], next_value)
        next_advantage = mx.where(valid[:, t], advantage, next_advantage)
        advantages.append(mx.where(valid[:, t], advantage, 0.0))
    advantages = mx.stack(advantages[::-1], axis=1)
    returns = mx.where(valid, advantages + values, 0.0)
    return advantages, returns


def whiten(x: mx.array, mask: mx.array, shift_mean: bool = True, eps: float = 1e-8) -> mx.array:
    """(x - mean) / sqrt(var + eps) over the masked entries; masked entries come back as 0.

    The variance is unbiased (Bessel: sum of squares / (n - 1)), as verl's and TRL's `masked_whiten`
    (`masked_var(unbiased=True)`). `shift_mean=False` rescales but keeps the mean (PPO implementations
    whiten rewards that way).
    """
    mean = masked_mean(x, mask)
    count = mask.astype(mx.float32).sum()
    variance = masked_mean(mx.square(x - mean), mask) * count / mx.maximum(count - 1.0, 1.0)
    whitened = (x - mean) * mx.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return mx.where(mask.astype(mx.bool_), whitened, 0.0)


def groups_with_signal(rewards, group_ids) -> np.ndarray:
    """DAPO dynamic sampling (Yu et al. 2025, eq. 11): per completion, whether its group's rewards differ.

    A group whose rewards are all equal has zero advantages and no gradient; DAPO drops it and samples
    more prompts until the batch is full of groups with signal. Returns a bool [N] numpy mask.
    """
    rewards = np.asarray(rewards, np.float64)
    ids = np.asarray(group_ids)
    if rewards.shape != ids.shape or rewards.ndim != 1:
        raise ValueError(f"rewards {rewards.shape} and group_ids {ids.shape} must both be [N]")
    keep = np.zeros(rewards.shape[0], bool)
    for group in np.unique(ids):
        members = ids == group
        keep[members] = rewards[members].max() != rewards[members].min()
    return keep
