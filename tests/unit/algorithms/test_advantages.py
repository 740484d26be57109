"""Advantage estimators against numpy: group-normalized, RLOO, REINFORCE++, GAE, whiten."""

import mlx.core as mx
import numpy as np
import pytest

from lazarus.algorithms.advantages import (
    gae,
    group_normalized_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
    whiten,
)
from lazarus.algorithms.policy_gradient import policy_gradient_loss

from .reference import assert_close, f32, fixed

G = 4
REWARDS = np.array([1.0, 0.0, 0.5, 1.0,   0.2, 0.9, 0.1, 0.3,   2.0, -1.0, 0.0, 0.7])
# groups of 8 equal rewards whose float32 group mean is off by rounding (0.7, 0.9), and exact ones
EQUAL_G = 8
EQUAL_GROUPS = np.array([0.7] * EQUAL_G + [0.9] * EQUAL_G + [1.0] * EQUAL_G)


def numpy_grouped(rewards):
    return np.asarray(rewards, np.float32).astype(np.float64).reshape(-1, G)


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_normalized_advantages_match_numpy(scale_by_std):
    advantages = group_normalized_advantages(f32(REWARDS), G, scale_by_std=scale_by_std)

    grouped = numpy_grouped(REWARDS)
    expected = grouped - grouped.mean(axis=1, keepdims=True)
    if scale_by_std:
        expected /= grouped.std(axis=1, ddof=1, keepdims=True) + 1e-4
    assert_close(advantages, expected.reshape(-1))


@pytest.mark.parametrize("estimator", [
    lambda r: group_normalized_advantages(r, EQUAL_G),
    lambda r: group_normalized_advantages(r, EQUAL_G, scale_by_std=False),
    lambda r: rloo_advantages(r, EQUAL_G),
    lambda r: reinforce_pp_advantages(r, EQUAL_G),
], ids=["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_equal_reward_groups_give_exact_zero_advantages_and_a_finite_loss(estimator):
    advantages = estimator(f32(EQUAL_GROUPS))

    assert np.array(advantages).tolist() == [0.0] * len(EQUAL_GROUPS)
    logprobs = f32(fixed((len(EQUAL_GROUPS), 5), seed=0, scale=0.1, shift=-1.0))
    loss, _ = policy_gradient_loss(logprobs, logprobs, advantages, mx.ones((len(EQUAL_GROUPS), 5)))
    assert np.isfinite(loss.item()) and loss.item() == 0.0


def test_one_equal_group_is_zero_while_the_others_are_normalized():
    rewards = np.concatenate([EQUAL_GROUPS[:EQUAL_G], REWARDS[:EQUAL_G]])

    advantages = np.array(group_normalized_advantages(f32(rewards), EQUAL_G))

    assert advantages[:EQUAL_G].tolist() == [0.0] * EQUAL_G
    assert np.abs(advantages[EQUAL_G:]).max() > 0.5


def test_rewards_that_do_not_fill_whole_groups_are_rejected():
    with pytest.raises(ValueError, match="group_size=5"):
        group_normalized_advantages(f32(REWARDS), 5)


def test_rloo_subtracts_the_mean_of_the_other_group_members():
    advantages = rloo_advantages(f32(REWARDS), G)

    rewards = np.asarray(REWARDS, np.float32).astype(np.float64)
    expected = []
    for start in range(0, len(rewards), G):
        group = rewards[start:start + G]
        expected += [group[i] - np.delete(group, i).mean() for i in range(G)]
    assert_close(advantages, expected)


def test_rloo_needs_at_least_two_samples_per_group():
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(f32(REWARDS), 1)


def test_reinforce_pp_normalizes_over_the_batch():
    advantages = reinforce_pp_advantages(f32(REWARDS))

    rewards = np.asarray(REWARDS, np.float32).astype(np.float64)
    assert_close(advantages, (rewards - rewards.mean()) / (rewards.std() + 1e-4))


def test_reinforce_pp_of_a_batch_of_equal_rewards_is_exact_zeros():
    advantages = reinforce_pp_advantages(f32(EQUAL_GROUPS[:EQUAL_G]))

    assert np.array(advantages).tolist() == [0.0] * EQUAL_G


def test_reinforce_pp_baseline_subtracts_the_group_mean_before_batch_normalization():
    advantages = reinforce_pp_advantages(f32(REWARDS), group_size=G)

    centered = (numpy_grouped(REWARDS) - numpy_grouped(REWARDS).mean(axis=1, keepdims=True)).reshape(-1)
    assert_close(advantages, (centered - centered.mean()) / (centered.std() + 1e-4))


def numpy_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE on each sequence's valid tokens only, value 0 after the last one."""
    advantages = np.zeros_like(rewards)
    for row in range(rewards.shape[0]):
        positions = np.flatnonzero(mask[row])
        running = 0.0
        for k in reversed(range(len(positions))):
            t = positions[k]
            next_value = values[row, positions[k + 1]] if k + 1 < len(positions) else 0.0
            delta = rewards[row, t] + gamma * next_value - values[row, t]
            running = delta + gamma * lam * running
            advantages[row, t] = running
    return advantages, np.where(mask == 1, advantages + values, 0.0)


GAE_MASK = np.array([
    [1, 1, 1, 1, 1, 1],
    [1, 1, 1, 0, 0, 0],  # right padding
    [1, 1, 0, 0, 1, 1],  # tool tokens in the middle of a multi-turn episode
    [0, 0, 0, 0, 0, 0],  # nothing to learn from
])


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0)])
def test_gae_matches_a_numpy_loop_over_the_valid_tokens(gamma, lam):
    rewards = fixed((4, 6), seed=0) * GAE_MASK
    values = fixed((4, 6), seed=1)

    advantages, returns = gae(f32(rewards), f32(values), mx.array(GAE_MASK), gamma, lam)

    expected_advantages, expected_returns = numpy_gae(rewards, values, GAE_MASK, gamma, lam)
    assert_close(advantages, expected_advantages)
    assert_close(returns, expected_returns)


def test_gae_with_gamma_and_lambda_one_and_zero_values_is_the_reward_to_go():
    rewards = np.array([[0.0, 0.0, 1.0, 0.0], [0.5, 0.0, 2.0, 0.0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])

    advantages, _ = gae(f32(rewards), mx.zeros((2, 4)), mx.array(mask), gamma=1.0, lam=1.0)

    assert np.array(advantages).tolist() == [[1.0, 1.0, 1.0, 0.0], [2.5, 2.0, 2.0, 0.0]]


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_normalizes_over_the_masked_entries_with_the_unbiased_variance(shift_mean):
    x = fixed((2, 5), seed=2, scale=3.0, shift=1.0)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])

    whitened = whiten(f32(x), mx.array(mask), shift_mean=shift_mean)

    values = x[mask == 1]
    expected = (x - values.mean()) / np.sqrt(values.var(ddof=1) + 1e-8)  # verl/TRL masked_whiten
    if not shift_mean:
        expected += values.mean()
    assert_close(whitened, np.where(mask == 1, expected, 0.0))
