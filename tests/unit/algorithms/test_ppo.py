"""PPO pieces against numpy: clipped surrogate, clipped value loss, entropy bonus, approx KL."""

import mlx.core as mx
import numpy as np
import pytest

from lazarus.algorithms.ppo import approx_kl, entropy_bonus, ppo_policy_loss, value_loss

from .reference import assert_close, f32, fixed

MASK = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
LOGPROBS = fixed((2, 5), seed=0, scale=0.5, shift=-1.0)
OLD_LOGPROBS = LOGPROBS + fixed((2, 5), seed=1, scale=0.3)
ADVANTAGES = fixed((2, 5), seed=2)


@pytest.mark.parametrize("clip_range, clip_range_high", [(0.2, None), (0.1, 0.3)])
def test_ppo_policy_loss_is_the_token_mean_clipped_surrogate(clip_range, clip_range_high):
    loss, metrics = ppo_policy_loss(f32(LOGPROBS), f32(OLD_LOGPROBS), f32(ADVANTAGES), mx.array(MASK),
                                    clip_range=clip_range, clip_range_high=clip_range_high)

    ratio = np.exp(LOGPROBS - OLD_LOGPROBS)
    high = clip_range if clip_range_high is None else clip_range_high
    surrogate = np.minimum(ratio * ADVANTAGES, np.clip(ratio, 1 - clip_range, 1 + high) * ADVANTAGES)
    assert_close(loss, -surrogate[MASK == 1].mean())
    clipped = ((ratio < 1 - clip_range) & (ADVANTAGES < 0)) | ((ratio > 1 + high) & (ADVANTAGES > 0))
    assert_close(metrics["clip_fraction"], clipped[MASK == 1].mean())


VALUES = np.array([[0.5, 1.0, -0.3, 2.0, 9.0], [0.0, 0.4, 7.0, 7.0, 7.0]])
OLD_VALUES = np.array([[0.1, 1.05, 0.0, 1.0, 0.0], [0.3, 0.4, 0.0, 0.0, 0.0]])
RETURNS = np.array([[1.0, 0.0, -1.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0, 0.0]])


def numpy_value_loss(values, old_values, returns, mask, clip):
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * unclipped[mask == 1].mean()
    clipped = (old_values + np.clip(values - old_values, -clip, clip) - returns) ** 2
    return 0.5 * np.maximum(unclipped, clipped)[mask == 1].mean()


@pytest.mark.parametrize("clip_range_value", [0.2, None])
def test_value_loss_is_half_the_pessimistic_squared_error(clip_range_value):
    loss, _ = value_loss(f32(VALUES), f32(OLD_VALUES), f32(RETURNS), mx.array(MASK), clip_range_value)

    assert_close(loss, numpy_value_loss(VALUES, OLD_VALUES, RETURNS, MASK, clip_range_value))


def test_value_clipping_stops_the_gradient_where_the_clipped_error_is_larger():
    # given (0,0) and (0,2) moved 0.4 and 0.3 toward their returns: clipped to a 0.2 step they stay
    # farther away, so the pessimistic max picks the clipped term, which is constant in the value;
    # (0,3) moved 1.0 away from its return: the unclipped error is larger and keeps its gradient
    def loss_fn(values):
        return value_loss(values, f32(OLD_VALUES), f32(RETURNS), mx.array(MASK), 0.2)[0]

    gradient = mx.grad(loss_fn)(f32(VALUES))
    _, metrics = value_loss(f32(VALUES), f32(OLD_VALUES), f32(RETURNS), mx.array(MASK), 0.2)

    expected = np.where(MASK == 1, (VALUES - RETURNS) / MASK.sum(), 0.0)  # d(0.5 mean (v - R)^2)/dv
    expected[0, 0] = expected[0, 2] = 0.0
    assert_close(gradient, expected)
    assert_close(metrics["value_clip_fraction"], 2 / 6)


def test_entropy_bonus_is_the_masked_mean_entropy():
    entropy = np.abs(fixed((2, 5), seed=3))

    assert_close(entropy_bonus(f32(entropy), mx.array(MASK)), entropy[MASK == 1].mean())


def test_approx_kl_is_the_k3_estimate_of_kl_old_to_new():
    kl = approx_kl(f32(LOGPROBS), f32(OLD_LOGPROBS), mx.array(MASK))

    log_r = LOGPROBS - OLD_LOGPROBS  # r = pi / pi_old on tokens sampled by pi_old
    assert_close(kl, ((np.exp(log_r) - 1) - log_r)[MASK == 1].mean())
    assert approx_kl(f32(LOGPROBS), f32(LOGPROBS), mx.array(MASK)).item() == 0.0
