"""kl_penalty: k1, k2, k3, abs, low_var_kl against their formulas; k3 is never negative; KL in the reward."""

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazarus.algorithms.kl import kl_penalty, kl_shaped_sequence_rewards, kl_shaped_token_rewards

from .reference import assert_close, assert_grad_matches, f32, fixed

LOGPROBS = fixed((3, 4), seed=0, scale=0.5, shift=-2.0)
REF_LOGPROBS = fixed((3, 4), seed=1, scale=0.5, shift=-2.0)
LOG_R = REF_LOGPROBS - LOGPROBS


@pytest.mark.parametrize("estimator, expected", [
    ("k1", -LOG_R),
    ("k2", 0.5 * LOG_R ** 2),
    ("k3", np.exp(LOG_R) - LOG_R - 1.0),
])
def test_kl_estimators_match_their_formulas(estimator, expected):
    kl = kl_penalty(f32(LOGPROBS), f32(REF_LOGPROBS), estimator)

    assert_close(kl, expected)


def test_k3_is_never_negative_on_a_grid_down_to_rounding_level_differences():
    # given differences from 1e-9 to 20 nats on both sides, on logprobs of several magnitudes
    steps = np.concatenate([[0.0], np.geomspace(1e-9, 20.0, 200)])
    differences = np.concatenate([steps, -steps])
    base = np.array([-1e-3, -0.7, -3.0, -30.0])[:, None]
    logprobs = np.broadcast_to(base, (4, differences.size))

    kl = kl_penalty(f32(logprobs), f32(logprobs + differences), "k3")

    assert np.array(kl).min() >= 0.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-50.0, 0.0), st.floats(-50.0, 0.0)), min_size=1, max_size=32))
def test_k3_is_never_negative_for_any_pair_of_logprobs(pairs):
    logprobs, ref_logprobs = np.array(pairs).T

    kl = kl_penalty(f32(logprobs), f32(ref_logprobs), "k3")

    assert np.array(kl).min() >= 0.0


def test_every_estimator_is_zero_when_the_policy_equals_the_reference():
    for estimator in ("k1", "k2", "k3"):
        assert np.array(kl_penalty(f32(LOGPROBS), f32(LOGPROBS), estimator)).max() == 0.0


def test_unknown_estimator_is_rejected_by_name():
    with pytest.raises(ValueError, match="'k4'"):
        kl_penalty(mx.zeros((1, 1)), mx.zeros((1, 1)), "k4")


def numpy_low_var_kl(logprobs, ref_logprobs):
    """verl `kl_penalty(..., "low_var_kl")`: k3 with log r clamped to +-20 and the result to [-10, 10]."""
    log_r = np.clip(ref_logprobs - logprobs, -20.0, 20.0)
    return np.clip(np.exp(log_r) - log_r - 1.0, -10.0, 10.0)


@pytest.mark.parametrize("estimator, reference", [
    ("abs", lambda lp, ref: np.abs(lp - ref)),
    ("low_var_kl", numpy_low_var_kl),
])
def test_verl_kl_estimators_match_numpy_in_value_and_gradient(estimator, reference):
    # given log-ratios that include one beyond the low_var_kl clamp (exp(3) - 3 - 1 > 10)
    logprobs = LOGPROBS.copy()
    logprobs[0, 0] = REF_LOGPROBS[0, 0] - 3.0

    kl = kl_penalty(f32(logprobs), f32(REF_LOGPROBS), estimator)

    assert_close(kl, reference(logprobs, REF_LOGPROBS), tol=1e-5)
    assert_grad_matches(lambda x: kl_penalty(x, f32(REF_LOGPROBS), estimator).sum(),
                        lambda x: reference(x, REF_LOGPROBS).sum(), logprobs)


def test_low_var_kl_is_bounded_by_ten_where_k3_explodes():
    kl = kl_penalty(f32([[-30.0]]), f32([[-1.0]]), "low_var_kl")

    assert kl.item() == 10.0


def test_kl_in_the_reward_puts_the_score_on_the_last_token_and_minus_beta_kl_everywhere():
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    scores = np.array([1.0, -0.5, 2.0])
    logprobs, ref = fixed((3, 4), seed=5, shift=-1.0), fixed((3, 4), seed=6, shift=-1.0)

    token_rewards = kl_shaped_token_rewards(f32(scores), f32(logprobs), f32(ref), mx.array(mask), beta=0.1)

    expected = -0.1 * (logprobs - ref) * mask
    expected[0, 2] += 1.0
    expected[1, 3] += -0.5
    assert_close(token_rewards, expected)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_sequence_kl_in_the_reward_subtracts_beta_times_the_summed_kl(estimator):
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    logprobs, ref = fixed((2, 3), seed=7, shift=-1.0), fixed((2, 3), seed=8, shift=-1.0)
    per_token = (logprobs - ref) if estimator == "k1" else np.exp(ref - logprobs) - (ref - logprobs) - 1.0

    shaped = kl_shaped_sequence_rewards(f32([1.0, 0.0]), f32(logprobs), f32(ref), mx.array(mask), 0.05, estimator)

    assert_close(shaped, np.array([1.0, 0.0]) - 0.05 * (per_token * mask).sum(axis=1))
