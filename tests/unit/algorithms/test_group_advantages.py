"""Advantages with groups given by id (verl's `index`), scale_rewards, REINFORCE++ at token level, GAE dones."""

import mlx.core as mx
import numpy as np
import pytest

from lazarus.algorithms.advantages import (
    gae,
    group_advantages,
    group_normalized_advantages,
    reinforce_pp_token_advantages,
    rloo_advantages,
    rloo_group_advantages,
)

from .reference import assert_close, f32, fixed

REWARDS = np.array([1.0, 0.0, 0.5, 1.0,   0.2, 0.9, 0.1, 0.3,   2.0, -1.0, 0.0, 0.7])
CONTIGUOUS_IDS = np.repeat([10, 11, 12], 4)
SHUFFLE = np.random.default_rng(0).permutation(12)


def numpy_group_advantages(rewards, ids, scale):
    advantages = np.zeros_like(rewards)
    for group in np.unique(ids):
        members = ids == group
        advantages[members] = rewards[members] - rewards[members].mean()
        if scale == "group":
            advantages[members] /= rewards[members].std(ddof=1) + 1e-4
    if scale == "batch":
        advantages /= rewards.std(ddof=1) + 1e-4
    return advantages


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_by_id_match_numpy_whatever_the_order(scale):
    rewards = REWARDS.astype(np.float32).astype(np.float64)

    # given the same completions in group-contiguous and in shuffled order
    contiguous = group_advantages(f32(rewards), CONTIGUOUS_IDS, group_size=4, scale_rewards=scale)
    shuffled = group_advantages(f32(rewards[SHUFFLE]), CONTIGUOUS_IDS[SHUFFLE], group_size=4, scale_rewards=scale)

    # then each completion gets the numpy advantage of its own group, in either order
    expected = numpy_group_advantages(rewards, CONTIGUOUS_IDS, scale)
    assert_close(contiguous, expected, tol=1e-5)
    assert_close(shuffled, expected[SHUFFLE], tol=1e-5)


@pytest.mark.parametrize("scale, legacy", [("group", True), ("none", False), ("batch", "batch")])
def test_positional_group_advantages_accept_scale_rewards_modes_and_the_old_bools(scale, legacy):
    by_position = group_normalized_advantages(f32(REWARDS), 4, scale_by_std=legacy)

    assert_close(by_position, group_advantages(f32(REWARDS), CONTIGUOUS_IDS, scale_rewards=scale), tol=1e-5)


def test_a_short_group_is_an_error_naming_the_group():
    ids = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3])

    with pytest.raises(ValueError, match=r"group 2 has 3 completions, expected group_size=4 \(short\)"):
        group_advantages(f32(REWARDS), ids, group_size=4)


def test_a_group_with_too_many_members_is_an_error_naming_the_group():
    ids = np.array([1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3])

    with pytest.raises(ValueError, match="group 2 has 5 completions"):
        rloo_group_advantages(f32(REWARDS), ids, group_size=4)


def test_equal_reward_groups_are_exactly_zero_by_id():
    rewards = np.array([0.7, 0.3, 0.7, 0.9, 0.7, 0.1])
    ids = np.array(["a", "b", "a", "b", "a", "b"])

    advantages = np.array(group_advantages(f32(rewards), ids))

    assert advantages[ids == "a"].tolist() == [0.0, 0.0, 0.0]
    assert np.all(advantages[ids == "b"] != 0.0)


def test_rloo_by_id_equals_rloo_by_position_on_contiguous_groups_and_follows_a_shuffle():
    by_position = np.array(rloo_advantages(f32(REWARDS), 4))

    shuffled = rloo_group_advantages(f32(REWARDS[SHUFFLE]), CONTIGUOUS_IDS[SHUFFLE], group_size=4)

    assert_close(shuffled, by_position[SHUFFLE])


def numpy_masked_whiten(x, mask):
    values = x[mask == 1]
    return np.where(mask == 1, (x - values.mean()) / np.sqrt(values.var(ddof=1) + 1e-8), 0.0)


MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_whitens_the_returns_over_all_tokens_of_the_batch(gamma):
    scores = np.array([1.0, 0.0, 0.5, -1.0])

    advantages = reinforce_pp_token_advantages(f32(scores), mx.array(MASK), gamma=gamma)

    # verl: the score on the last valid token, discounted returns, masked_whiten over tokens
    returns = np.zeros(MASK.shape)
    for row in range(4):
        n = MASK[row].sum()
        returns[row, :n] = scores[row] * gamma ** np.arange(n - 1, -1, -1)
    assert_close(advantages, numpy_masked_whiten(returns, MASK), tol=1e-5)


def test_reinforce_pp_baseline_subtracts_the_group_mean_then_whitens_over_tokens():
    scores = np.array([1.0, 0.0, 0.5, 0.5])
    ids = np.array([0, 0, 1, 1])

    advantages = reinforce_pp_token_advantages(f32(scores), mx.array(MASK), group_ids=ids, group_size=2)

    centred = np.array([0.5, -0.5, 0.0, 0.0])[:, None] * MASK
    assert_close(advantages, numpy_masked_whiten(centred, MASK), tol=1e-5)


def numpy_gae_with_dones(rewards, values, mask, dones, gamma, lam):
    advantages = np.zeros_like(rewards)
    for row in range(rewards.shape[0]):
        positions = np.flatnonzero(mask[row])
        running, next_value = 0.0, 0.0
        for k in reversed(range(len(positions))):
            t = positions[k]
            if dones[row, t]:
                running, next_value = 0.0, 0.0
            delta = rewards[row, t] + gamma * next_value - values[row, t]
            running = delta + gamma * lam * running
            advantages[row, t] = running
            next_value = values[row, t]
    return advantages


def test_gae_with_dones_keeps_two_episodes_in_one_row_independent():
    # given two episodes in one row (done at token 2), with a masked tool token between them in row 1
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 1, 1]])
    dones = np.array([[0, 0, 1, 0, 0, 1], [0, 0, 1, 0, 0, 1]])
    rewards, values = fixed((2, 6), seed=0) * mask, fixed((2, 6), seed=1)

    advantages, returns = gae(f32(rewards), f32(values), mx.array(mask), 0.99, 0.95, dones=mx.array(dones))

    expected = numpy_gae_with_dones(rewards, values, mask, dones, 0.99, 0.95)
    assert_close(advantages, expected, tol=1e-5)
    assert_close(returns, np.where(mask == 1, expected + values, 0.0), tol=1e-5)
    # and the first episode's advantages equal those of the first episode alone
    alone, _ = gae(f32(rewards[:, :3]), f32(values[:, :3]), mx.array(mask[:, :3]), 0.99, 0.95)
    assert_close(advantages[:, :3], np.array(alone), tol=1e-6)


def test_reinforce_pp_of_equal_rewards_is_exact_zeros_at_token_level():
    advantages = reinforce_pp_token_advantages(f32([0.7, 0.7, 0.7, 0.7]), mx.array(MASK))

    assert np.array(advantages).tolist() == np.zeros(MASK.shape).tolist()
