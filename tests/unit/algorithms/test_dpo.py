"""DPO / IPO / hinge / SimPO / ORPO against numpy, on completion-token sequence logprobs."""

import mlx.core as mx
import numpy as np
import pytest

from lazarus.algorithms.dpo import dpo_loss, orpo_loss, simpo_loss
from lazarus.algorithms.logprobs import sequence_logprobs

from .reference import assert_close, f32, fixed

POLICY_CHOSEN = fixed(4, seed=0, scale=3.0, shift=-20.0)
POLICY_REJECTED = fixed(4, seed=1, scale=3.0, shift=-20.0)
REF_CHOSEN = fixed(4, seed=2, scale=3.0, shift=-20.0)
REF_REJECTED = fixed(4, seed=3, scale=3.0, shift=-20.0)
H = (POLICY_CHOSEN - REF_CHOSEN) - (POLICY_REJECTED - REF_REJECTED)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def dpo(**options):
    return dpo_loss(f32(POLICY_CHOSEN), f32(POLICY_REJECTED), f32(REF_CHOSEN), f32(REF_REJECTED), **options)


@pytest.mark.parametrize("loss_type, beta, label_smoothing, expected", [
    ("sigmoid", 0.1, 0.0, -log_sigmoid(0.1 * H)),
    ("sigmoid", 0.5, 0.1, -0.9 * log_sigmoid(0.5 * H) - 0.1 * log_sigmoid(-0.5 * H)),
    ("ipo", 0.1, 0.0, (H - 1 / (2 * 0.1)) ** 2),
    ("hinge", 0.3, 0.0, np.maximum(0.0, 1 - 0.3 * H)),
])
def test_dpo_losses_match_their_formulas(loss_type, beta, label_smoothing, expected):
    loss, _ = dpo(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)

    assert_close(loss, expected.mean())


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
    with pytest.raises(ValueError, match="'robust'"):
        dpo(loss_type="robust")


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
