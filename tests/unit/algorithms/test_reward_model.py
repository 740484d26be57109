"""Bradley-Terry reward-model loss against numpy: value, gradient, margin and reward centring."""

import mlx.core as mx
import numpy as np
import pytest

from lazarus.algorithms.reward_model import bradley_terry_loss

from .reference import assert_close, assert_grad_matches, f32, fixed

CHOSEN = fixed(6, seed=0, scale=2.0)
REJECTED = fixed(6, seed=1, scale=2.0)
MARGIN = np.abs(fixed(6, seed=2))


def numpy_bradley_terry(chosen, rejected=REJECTED, margin=None, center=0.0):
    difference = chosen - rejected - (0.0 if margin is None else margin)
    return (np.logaddexp(0.0, -difference) + center * (chosen + rejected) ** 2).mean()


@pytest.mark.parametrize("margin, center", [(None, 0.0), (MARGIN, 0.0), (None, 0.01)],
                         ids=["plain", "margin", "centred"])
def test_bradley_terry_loss_matches_numpy_in_value_and_gradient(margin, center):
    def mlx_loss(chosen, rejected=f32(REJECTED)):
        return bradley_terry_loss(chosen, rejected, margin=None if margin is None else f32(margin),
                                  center_coef=center)[0]

    assert_close(mlx_loss(f32(CHOSEN)), numpy_bradley_terry(CHOSEN, margin=margin, center=center))
    assert_grad_matches(mlx_loss, lambda x: numpy_bradley_terry(x, margin=margin, center=center), CHOSEN)
    assert_grad_matches(lambda x: mlx_loss(f32(CHOSEN), x),
                        lambda x: numpy_bradley_terry(CHOSEN, x, margin=margin, center=center), REJECTED)


def test_pairwise_accuracy_counts_pairs_where_the_chosen_scores_higher_and_ties_lose():
    _, metrics = bradley_terry_loss(f32([1.0, 0.0, 2.0, 0.5]), f32([0.0, 1.0, 2.0, -0.5]))

    assert metrics["pairwise_accuracy"].item() == 0.5


def test_a_huge_reward_gap_gives_a_finite_loss():
    loss, _ = bradley_terry_loss(f32([-200.0]), f32([200.0]))

    assert loss.item() == pytest.approx(400.0)


def test_rewards_of_different_shapes_are_rejected():
    with pytest.raises(ValueError, match="rewards_rejected"):
        bradley_terry_loss(mx.zeros(3), mx.zeros(4))
