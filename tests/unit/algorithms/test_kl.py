"""kl_penalty: k1, k2, k3 against their formulas; k3 is never negative."""

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazarus.algorithms.kl import kl_penalty

from .reference import assert_close, f32, fixed

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
