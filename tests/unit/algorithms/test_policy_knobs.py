"""The TRL/verl knobs of the policy-gradient loss against numpy: log-ratio clamp, TRL's `delta`, verl's
dual-clip, GSPO clip metrics per sequence, verl's loss aggregation modes (policy and value), and
RLOO's one-ratio-per-sequence form; values and gradients."""

import mlx.core as mx
import numpy as np
import pytest

from lazarus.algorithms.logprobs import aggregate_loss
from lazarus.algorithms.policy_gradient import policy_gradient_loss
from lazarus.algorithms.ppo import ppo_policy_loss, value_loss
from lazarus.algorithms.rloo import rloo_sequence_loss

from .reference import assert_close, assert_grad_matches, f32, fixed

MASK = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.float64)
BEHAVIOR = fixed((4, 5), seed=0, scale=0.3, shift=-1.5)
LOGPROBS = BEHAVIOR + fixed((4, 5), seed=1, scale=0.6)  # ratios well beyond 1 +- 0.2 on both sides
ADVANTAGES = np.array([1.0, -1.5, -0.7, 0.4])


def numpy_aggregate(loss, mask, mode, normalizer=None):
    if mode == "token-mean":
        return (loss * mask).sum() / mask.sum()
    sums = (loss * mask).sum(axis=1)
    if mode == "seq-mean-token-sum":
        return sums.mean()
    if mode == "seq-mean-token-mean":
        return (sums / np.maximum(mask.sum(axis=1), 1)).mean()
    return sums.sum() / (normalizer or loss.shape[1])


def numpy_pg_loss(logprobs, eps_low=0.2, eps_high=0.2, delta=None, clip_ratio_c=None, mode="token-mean"):
    """verl `compute_policy_loss` (dual-clip) / TRL `_compute_loss` (delta), token level, numpy float64."""
    ratio = np.exp(np.clip(logprobs - BEHAVIOR, -20, 20))
    advantages = ADVANTAGES[:, None]
    unclipped = ratio if delta is None else np.minimum(ratio, delta)
    loss = -np.minimum(unclipped * advantages, np.clip(ratio, 1 - eps_low, 1 + eps_high) * advantages)
    if clip_ratio_c is not None:
        loss = np.where(advantages < 0, np.minimum(loss, -advantages * clip_ratio_c), loss)
    return numpy_aggregate(loss, MASK, mode)


@pytest.mark.parametrize("options", [
    {"delta": 1.5},
    {"clip_ratio_c": 1.3},
    {"clip_ratio_c": 3.0, "eps_high": 0.28},
    {"mode": "seq-mean-token-sum"},
    {"mode": "seq-mean-token-mean"},
    {"mode": "seq-mean-token-sum-norm"},
])
def test_policy_gradient_knobs_match_numpy_in_value_and_gradient(options):
    kwargs = {"epsilon_high": options.get("eps_high", 0.2), "delta": options.get("delta"),
              "clip_ratio_c": options.get("clip_ratio_c"), "loss_agg_mode": options.get("mode", "token-mean")}

    def mlx_loss(logprobs):
        return policy_gradient_loss(logprobs, f32(BEHAVIOR), f32(ADVANTAGES), mx.array(MASK), **kwargs)[0]

    def reference(logprobs):
        return numpy_pg_loss(logprobs, eps_high=kwargs["epsilon_high"], delta=kwargs["delta"],
                             clip_ratio_c=kwargs["clip_ratio_c"], mode=kwargs["loss_agg_mode"])

    assert_close(mlx_loss(f32(LOGPROBS)), reference(LOGPROBS), tol=1e-5)
    assert_grad_matches(mlx_loss, reference, LOGPROBS)


def test_dual_clip_bounds_the_loss_of_a_negative_advantage_token_with_an_exploding_ratio():
    # given one token whose ratio is e^5 under a negative advantage
    logprobs, behavior, mask = f32([[-1.0]]), f32([[-6.0]]), mx.ones((1, 1))

    plain, _ = policy_gradient_loss(logprobs, behavior, f32([-2.0]), mask)
    dual, metrics = policy_gradient_loss(logprobs, behavior, f32([-2.0]), mask, clip_ratio_c=3.0)
    capped, _ = policy_gradient_loss(logprobs, behavior, f32([-2.0]), mask, delta=2.0)

    assert plain.item() == pytest.approx(2.0 * np.exp(5.0), rel=1e-5)
    assert dual.item() == pytest.approx(2.0 * 3.0, rel=1e-6)
    assert capped.item() == pytest.approx(2.0 * 2.0, rel=1e-6)
    assert metrics["clip_fraction_dual"].item() == 1.0


def test_a_diverged_trajectory_gives_a_finite_loss_and_gradient():
    # given a stale behaviour logprob 200 nats below the current one (exp(200) overflows float32)
    logprobs, behavior = f32([[-0.5, -1.0]]), f32([[-200.5, -1.0]])

    def loss_of(lp):
        return policy_gradient_loss(lp, behavior, f32([-1.0]), mx.ones((1, 2)))[0]

    loss, grad = mx.value_and_grad(loss_of)(logprobs)
    assert np.isfinite(loss.item()) and np.all(np.isfinite(np.array(grad)))
    assert loss.item() == pytest.approx((np.exp(20.0) + 1.0) / 2, rel=1e-5)  # log-ratio clamped at 20


def test_gspo_clip_fractions_count_sequences_not_tokens():
    # given a long sequence whose ratio is clipped and a short one whose ratio is not
    mask = mx.array(np.array([[1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]]))
    behavior = f32(np.full((2, 6), -1.0))
    logprobs = f32(np.array([[-0.5] * 6, [-1.0] + [0.0] * 5]))

    _, metrics = policy_gradient_loss(logprobs, behavior, f32([1.0, 1.0]), mask,
                                      importance_sampling_level="sequence")

    assert metrics["clip_fraction_high"].item() == 0.5  # one of two sequences (6 of 7 tokens)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                                  "seq-mean-token-sum-norm"])
def test_aggregate_loss_matches_verl_agg_loss(mode):
    loss = fixed((4, 5), seed=3)

    assert_close(aggregate_loss(f32(loss), mx.array(MASK), mode), numpy_aggregate(loss, MASK, mode))


def test_aggregate_loss_rejects_an_unknown_mode_by_name():
    with pytest.raises(ValueError, match="'seq-sum'"):
        aggregate_loss(f32(fixed((2, 2), seed=0)), mx.ones((2, 2)), "seq-sum")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_value_loss_aggregates_like_the_policy_loss(mode):
    values, old_values, returns = fixed((4, 5), seed=4), fixed((4, 5), seed=5), fixed((4, 5), seed=6)

    def reference(v):
        clipped = old_values + np.clip(v - old_values, -0.2, 0.2)
        return 0.5 * numpy_aggregate(np.maximum((v - returns) ** 2, (clipped - returns) ** 2), MASK, mode)

    def mlx_loss(v):
        return value_loss(v, f32(old_values), f32(returns), mx.array(MASK), 0.2, loss_agg_mode=mode)[0]

    assert_close(mlx_loss(f32(values)), reference(values), tol=1e-5)
    assert_grad_matches(mlx_loss, reference, values)


def test_ppo_policy_loss_passes_dual_clip_and_aggregation_through():
    loss, _ = ppo_policy_loss(f32(LOGPROBS), f32(BEHAVIOR), f32(ADVANTAGES), mx.array(MASK), 0.2,
                              loss_agg_mode="seq-mean-token-sum", clip_ratio_c=1.3)

    assert_close(loss, numpy_pg_loss(LOGPROBS, clip_ratio_c=1.3, mode="seq-mean-token-sum"), tol=1e-5)


def numpy_rloo_sequence_loss(logprobs, epsilon=0.2):
    ratio = np.exp(((logprobs - BEHAVIOR) * MASK).sum(axis=1))
    return np.maximum(-ADVANTAGES * ratio, -ADVANTAGES * np.clip(ratio, 1 - epsilon, 1 + epsilon)).mean()


def test_rloo_sequence_loss_uses_one_summed_ratio_per_sequence_as_trl():
    # a smaller move than LOGPROBS so that some summed ratios stay inside the clip range
    logprobs = BEHAVIOR + 0.05 * fixed((4, 5), seed=1)

    def mlx_loss(lp):
        return rloo_sequence_loss(lp, f32(BEHAVIOR), f32(ADVANTAGES), mx.array(MASK))[0]

    assert_close(mlx_loss(f32(logprobs)), numpy_rloo_sequence_loss(logprobs), tol=1e-5)
    assert_grad_matches(mlx_loss, numpy_rloo_sequence_loss, logprobs)


@pytest.mark.parametrize("options, field", [
    ({"delta": 1.1}, "delta"), ({"clip_ratio_c": 0.9}, "clip_ratio_c"), ({"loss_agg_mode": "mean"}, "loss_agg_mode"),
])
def test_bad_knobs_are_rejected_naming_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        policy_gradient_loss(f32(LOGPROBS), f32(BEHAVIOR), f32(ADVANTAGES), mx.array(MASK), **options)
