"""DPO / IPO / hinge / BCO / SimPO / ORPO against numpy, on completion-token sequence logprobs."""

import mlx.core as mx
import numpy as np
import pytest

from lazarus.algorithms.dpo import bco_pair_loss, dpo_loss, orpo_loss, simpo_loss
from lazarus.algorithms.logprobs import sequence_logprobs

from .reference import assert_close, assert_grad_matches, f32, fixed

POLICY_CHOSEN = fixed(4, seed=0, scale=3.0, shift=-20.0)
POLICY_REJECTED = fixed(4, seed=1, scale=3.0, shift=-20.0)
REF_CHOSEN = fixed(4, seed=2, scale=3.0, shift=-20.0)
REF_REJECTED = fixed(4, seed=3, scale=3.0, shift=-20.0)
H = (POLICY_CHOSEN - REF_CHOSEN) - (POLICY_REJECTED - REF_REJECTED)
CHOSEN_LENGTHS = np.array([3.0, 7.0, 12.0, 1.0])
REJECTED_LENGTHS = np.array([5.0, 7.0, 2.0, 9.0])


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def dpo(**options):
    return dpo_loss(f32(POLICY_CHOSEN), f32(POLICY_REJECTED), f32(REF_CHOSEN), f32(REF_REJECTED), **options)


@pytest.mark.parametrize("loss_type, beta, label_smoothing, expected", [
    ("sigmoid", 0.1, 0.0, -log_sigmoid(0.1 * H)),
    ("sigmoid", 0.5, 0.1, -0.9 * log_sigmoid(0.5 * H) - 0.1 * log_sigmoid(-0.5 * H)),
    ("hinge", 0.3, 0.0, np.maximum(0.0, 1 - 0.3 * H)),
])
def test_dpo_losses_match_their_formulas(loss_type, beta, label_smoothing, expected):
    loss, _ = dpo(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)

    assert_close(loss, expected.mean())


def numpy_preference_loss(loss_type, beta, label_smoothing, policy_chosen, policy_rejected=POLICY_REJECTED):
    """The TRL `dpo_loss` formulas in float64 numpy (mean over pairs)."""
    c, r = policy_chosen - REF_CHOSEN, policy_rejected - REF_REJECTED
    h, e = c - r, label_smoothing
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    if loss_type == "ipo":  # TRL: log-ratios averaged over the completion tokens
        normalised = c / CHOSEN_LENGTHS - r / REJECTED_LENGTHS
        return ((normalised - 1 / (2 * beta)) ** 2).mean()
    if loss_type == "robust":
        return ((-(1 - e) * log_sigmoid(beta * h) + e * log_sigmoid(-beta * h)) / (1 - 2 * e)).mean()
    if loss_type == "apo_zero":
        return ((1 - sigmoid(beta * c)) + sigmoid(beta * r)).mean()
    if loss_type == "apo_down":
        return (sigmoid(beta * c) + (1 - sigmoid(beta * h))).mean()
    raise AssertionError(loss_type)


@pytest.mark.parametrize("loss_type, beta, label_smoothing", [
    ("ipo", 0.1, 0.0), ("robust", 0.5, 0.1), ("robust", 0.1, 0.0), ("apo_zero", 0.1, 0.0), ("apo_down", 0.2, 0.0),
])
def test_length_normalised_ipo_robust_dpo_and_apo_match_numpy_in_value_and_gradient(loss_type, beta,
                                                                                     label_smoothing):
    def mlx_loss(policy_chosen, policy_rejected=f32(POLICY_REJECTED)):
        return dpo_loss(policy_chosen, policy_rejected, f32(REF_CHOSEN), f32(REF_REJECTED), beta=beta,
                        loss_type=loss_type, label_smoothing=label_smoothing,
                        chosen_lengths=f32(CHOSEN_LENGTHS), rejected_lengths=f32(REJECTED_LENGTHS))[0]

    assert_close(mlx_loss(f32(POLICY_CHOSEN)), numpy_preference_loss(loss_type, beta, label_smoothing, POLICY_CHOSEN),
                 tol=1e-5)
    assert_grad_matches(mlx_loss, lambda x: numpy_preference_loss(loss_type, beta, label_smoothing, x), POLICY_CHOSEN)
    assert_grad_matches(lambda x: mlx_loss(f32(POLICY_CHOSEN), x),
                        lambda x: numpy_preference_loss(loss_type, beta, label_smoothing, POLICY_CHOSEN, x),
                        POLICY_REJECTED)


def test_ipo_beta_does_not_depend_on_completion_length():
    # given the same per-token log-ratios on completions twice as long
    short, _ = dpo_loss(f32([-4.0]), f32([-6.0]), f32([-5.0]), f32([-5.0]), beta=0.1, loss_type="ipo",
                        chosen_lengths=f32([2.0]), rejected_lengths=f32([2.0]))
    long, _ = dpo_loss(f32([-8.0]), f32([-12.0]), f32([-10.0]), f32([-10.0]), beta=0.1, loss_type="ipo",
                       chosen_lengths=f32([4.0]), rejected_lengths=f32([4.0]))

    # then the IPO loss is the same
    assert short.item() == pytest.approx(long.item(), rel=1e-6)


def test_ipo_without_lengths_is_refused():
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo(loss_type="ipo")


def test_robust_dpo_with_no_label_noise_is_sigmoid_dpo():
    robust, _ = dpo(loss_type="robust", beta=0.3)
    sigmoid, _ = dpo(loss_type="sigmoid", beta=0.3)

    assert robust.item() == pytest.approx(sigmoid.item(), rel=1e-6)


def test_dpo_metrics_are_the_implicit_rewards():
    _, metrics = dpo(beta=0.1)

    chosen, rejected = 0.1 * (POLICY_CHOSEN - REF_CHOSEN), 0.1 * (POLICY_REJECTED - REF_REJECTED)
    assert_close(metrics["rewards_chosen"], chosen.mean())
    assert_close(metrics["rewards_rejected"], rejected.mean())
    assert_close(metrics["reward_margin"], (chosen - rejected).mean())
    assert_close(metrics["reward_accuracy"], (chosen > rejected).mean())


def test_dpo_sigmoid_loss_is_log_2_when_the_policy_is_the_reference():
    loss, _ = dpo_loss(f32(REF_CHOSEN), f32(REF_REJECTED), f32(REF_CHOSEN), f32(REF_REJECTED))

    assert loss.item() == pytest.approx(np.log(2.0), rel=1e-6)


def test_unknown_dpo_loss_type_is_rejected_by_name():
    with pytest.raises(ValueError, match="'bco'"):
        dpo(loss_type="bco")


def test_dpo_ignores_prompt_tokens_through_sequence_logprobs():
    # given token logprobs of [prompt | completion | padding] with the completion mask
    completion_mask = mx.array(np.array([[0, 0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1]]))
    chosen_tokens, rejected_tokens = fixed((2, 7), seed=4, shift=-2.0), fixed((2, 7), seed=5, shift=-2.0)
    ref_chosen_tokens, ref_rejected_tokens = fixed((2, 7), seed=6, shift=-2.0), fixed((2, 7), seed=7, shift=-2.0)

    def loss_of(chosen_tokens):
        sequences = [sequence_logprobs(f32(tokens), completion_mask)
                     for tokens in (chosen_tokens, rejected_tokens, ref_chosen_tokens, ref_rejected_tokens)]
        return dpo_loss(*sequences, beta=0.5)[0].item()

    # when only prompt and padding tokens change, the loss does not; when a completion token does, it does
    prompt_changed = chosen_tokens.copy()
    prompt_changed[:, :2] -= 5.0
    prompt_changed[0, 6] -= 5.0
    completion_changed = chosen_tokens.copy()
    completion_changed[0, 4] -= 5.0
    assert loss_of(prompt_changed) == loss_of(chosen_tokens)
    assert loss_of(completion_changed) != loss_of(chosen_tokens)


CHOSEN_AVG = fixed(4, seed=8, scale=0.3, shift=-1.0)
REJECTED_AVG = fixed(4, seed=9, scale=0.3, shift=-1.0)


def test_simpo_loss_matches_its_formula():
    loss, metrics = simpo_loss(f32(CHOSEN_AVG), f32(REJECTED_AVG), beta=2.0, gamma=0.5)

    assert_close(loss, -log_sigmoid(2.0 * (CHOSEN_AVG - REJECTED_AVG) - 0.5).mean())
    assert_close(metrics["reward_margin"], (2.0 * (CHOSEN_AVG - REJECTED_AVG)).mean())


@pytest.mark.parametrize("shift", [0.0, 0.3, 0.95], ids=["typical", "near_log_half", "near_zero"])
def test_orpo_loss_is_nll_plus_lambda_times_the_odds_ratio_loss(shift):
    # given average logprobs around -1, then moved toward -ln 2 and toward 0 (probability near 1)
    chosen = np.minimum(CHOSEN_AVG + shift, -1e-3).astype(np.float32).astype(np.float64)
    rejected = np.minimum(REJECTED_AVG + shift, -1e-3).astype(np.float32).astype(np.float64)
    nll = fixed(4, seed=10, scale=0.1, shift=1.0)

    loss, metrics = orpo_loss(f32(chosen), f32(rejected), f32(nll), lam=0.1)

    log_odds = (chosen - rejected) - (np.log1p(-np.exp(chosen)) - np.log1p(-np.exp(rejected)))
    assert_close(loss, (nll - 0.1 * log_sigmoid(log_odds)).mean())
    assert_close(metrics["log_odds_ratio"], log_odds.mean())
    assert_close(metrics["nll"], nll.mean())


def numpy_bco_pair(beta, policy_chosen, policy_rejected, running_mean, running_count, delta=None):
    """TRL `bco_pair`: delta = RunningMoments mean after adding this batch's mean reward (float64)."""
    chosen, rejected = beta * (policy_chosen - REF_CHOSEN), beta * (policy_rejected - REF_REJECTED)
    if delta is None:
        batch = np.concatenate([chosen, rejected]).mean()
        delta = (running_mean * running_count + batch) / (running_count + 1)
    return (-log_sigmoid(chosen - delta) - log_sigmoid(-(rejected - delta))).mean(), delta


@pytest.mark.parametrize("beta, running_mean, running_count", [(0.1, 0.0, 0), (0.5, 0.3, 4), (0.2, -1.5, 10)])
def test_bco_pair_matches_numpy_in_value_and_gradient_with_the_threshold_held_fixed(beta, running_mean,
                                                                                   running_count):
    running = f32([running_mean, running_count])

    def mlx_loss(policy_chosen, policy_rejected=f32(POLICY_REJECTED)):
        return bco_pair_loss(policy_chosen, policy_rejected, f32(REF_CHOSEN), f32(REF_REJECTED), running,
                             beta=beta)

    loss, metrics = mlx_loss(f32(POLICY_CHOSEN))
    expected, delta = numpy_bco_pair(beta, POLICY_CHOSEN, POLICY_REJECTED, running_mean, running_count)
    assert_close(loss, expected, tol=1e-5)
    assert_close(metrics["bco_delta"], delta, tol=1e-5)
    # delta is a running statistic, not differentiated through (TRL detaches it)
    assert_grad_matches(lambda x: mlx_loss(x)[0],
                        lambda x: numpy_bco_pair(beta, x, POLICY_REJECTED, 0, 0, delta)[0], POLICY_CHOSEN)
    assert_grad_matches(lambda x: mlx_loss(f32(POLICY_CHOSEN), x)[0],
                        lambda x: numpy_bco_pair(beta, POLICY_CHOSEN, x, 0, 0, delta)[0], POLICY_REJECTED)


def test_bco_pair_threshold_is_the_mean_reward_of_all_steps_so_far():
    # given three steps' batches whose mean rewards are m1, m2, m3 (shifts of the chosen logprobs)
    running, means = np.array([0.0, 0.0]), []
    for shift in (0.0, 2.0, -5.0):
        _, metrics = bco_pair_loss(f32(POLICY_CHOSEN + shift), f32(POLICY_REJECTED), f32(REF_CHOSEN),
                                   f32(REF_REJECTED), f32(running), beta=0.1)
        means.append(metrics["bco_batch_reward"].item())
        # then each step's delta is the mean of the batch means up to and including it
        assert metrics["bco_delta"].item() == pytest.approx(np.mean(means), abs=1e-5)
        running = np.array([running[0] + (means[-1] - running[0]) / (running[1] + 1), running[1] + 1])
