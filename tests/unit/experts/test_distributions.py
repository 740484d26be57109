"""The experts' action distributions against by-hand formulas in float64."""

import math

import mlx.core as mx
import numpy as np
import pytest

from lazarus.experts.distributions import (
    categorical_logprob,
    np_categorical_logprob,
    np_squashed_gaussian_logprob,
    squashed_gaussian_logprob,
    tanh_log_det,
)


def by_hand_squashed_logprob(mean, log_std, u):
    """log N(u; mean, std) - log(1 - tanh(u)^2), summed over dimensions, written out term by term."""
    total = 0.0
    for m, s, x in zip(mean, log_std, u):
        std = math.exp(s)
        gaussian = -((x - m) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
        total += gaussian - math.log(1 - math.tanh(x) ** 2)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_squashed_gaussian_logprob_equals_the_by_hand_density_with_the_tanh_correction(seed):
    # given: means, log stds and pre-tanh samples for a batch of 3-D actions
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(5, 3)).astype(np.float32)
    log_std = rng.uniform(-1.5, 0.5, size=(5, 3)).astype(np.float32)
    u = (mean + np.exp(log_std) * rng.normal(size=(5, 3))).astype(np.float32)

    # when: the MLX and numpy versions compute log pi(tanh(u))
    mlx_logprob = np.array(squashed_gaussian_logprob(mx.array(mean), mx.array(log_std), mx.array(u)))
    numpy_logprob = np_squashed_gaussian_logprob(mean, log_std, u)

    # then: both equal the textbook formula evaluated in float64
    expected = [by_hand_squashed_logprob(*map(lambda a: a.astype(np.float64), row)) for row in zip(mean, log_std, u)]
    np.testing.assert_allclose(mlx_logprob, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(numpy_logprob, expected, rtol=1e-5, atol=1e-5)


def test_squashed_gaussian_density_integrates_to_one_over_the_squashed_action():
    # given: a 1-D squashed Gaussian far from centred (much of its mass near the bound)
    mean, log_std = mx.array([[1.2]]), mx.array([[-0.3]])
    # when: its density over a = tanh(u) is integrated numerically over (-1, 1)
    a = np.linspace(-1 + 1e-6, 1 - 1e-6, 200_001)
    u = mx.array(np.arctanh(a)[:, None].astype(np.float32))
    means, log_stds = mx.broadcast_to(mean, u.shape), mx.broadcast_to(log_std, u.shape)
    density = np.exp(np.array(squashed_gaussian_logprob(means, log_stds, u)))
    # then: it is a probability density (without the log-det correction it would not be)
    assert np.trapezoid(density, a) == pytest.approx(1.0, abs=1e-3)


def test_tanh_log_det_stays_finite_where_the_naive_form_underflows():
    u = mx.array([0.0, 3.0, -12.0, 30.0])
    log_det = np.array(tanh_log_det(u))
    assert np.isfinite(log_det).all()
    assert log_det[0] == pytest.approx(0.0, abs=1e-7)
    assert log_det[3] == pytest.approx(2 * (math.log(2) - 30.0), rel=1e-5)  # naive log(1 - tanh^2) is -inf here


def test_categorical_logprob_is_the_log_softmax_of_the_chosen_action():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    actions = np.array([0, 2])
    expected = [2.0 - math.log(math.exp(2.0) + math.exp(-1.0) + math.exp(0.5)), -math.log(3.0)]
    np.testing.assert_allclose(np.array(categorical_logprob(mx.array(logits), mx.array(actions))), expected, rtol=1e-6)
    np.testing.assert_allclose(np_categorical_logprob(logits, actions), expected, rtol=1e-6)
