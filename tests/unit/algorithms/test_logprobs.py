"""token_logprobs / token_entropy / masked reductions against float64 numpy."""

import mlx.core as mx
import numpy as np
import pytest

from lazarus.algorithms.logprobs import (
    masked_mean,
    masked_sum,
    sequence_logprobs,
    token_entropy,
    token_logprobs,
)

from .reference import assert_close, f32, fixed, log_softmax

B, T, V = 2, 4, 7
TARGETS = np.array([[0, 3, 6, 2], [5, 5, 1, 4]])
MASK = np.array([[0, 1, 1, 1], [0, 0, 1, 0]])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_are_log_softmax_at_the_targets(temperature):
    logits = fixed((B, T, V), seed=0, scale=3.0)

    logprobs = token_logprobs(f32(logits), mx.array(TARGETS), temperature=temperature)

    expected = np.take_along_axis(log_softmax(logits / temperature), TARGETS[..., None], axis=-1)[..., 0]
    assert logprobs.dtype == mx.float32
    assert_close(logprobs, expected)


def test_token_logprobs_stay_finite_where_a_naive_softmax_overflows():
    # given logits around 100 (exp overflows float32 at ~88)
    logits = fixed((B, T, V), seed=1, shift=100.0)

    logprobs = token_logprobs(f32(logits), mx.array(TARGETS))

    expected = np.take_along_axis(log_softmax(logits), TARGETS[..., None], axis=-1)[..., 0]
    # 1e-5: float32 spacing at 100 is 7.6e-6, so logits - logsumexp cannot be closer than that
    assert_close(logprobs, expected, tol=1e-5)


def test_token_logprobs_of_bfloat16_logits_are_float32():
    logits = f32(fixed((B, T, V), seed=2)).astype(mx.bfloat16)

    logprobs = token_logprobs(logits, mx.array(TARGETS))

    expected = np.take_along_axis(log_softmax(np.array(logits.astype(mx.float32), np.float64)),
                                  TARGETS[..., None], axis=-1)[..., 0]
    assert logprobs.dtype == mx.float32
    assert_close(logprobs, expected)


def test_non_positive_temperature_is_rejected_by_name():
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(f32(fixed((B, T, V), seed=0)), mx.array(TARGETS), temperature=0.0)


@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_token_entropy_is_minus_sum_p_log_p(temperature):
    logits = fixed((B, T, V), seed=3, scale=2.0)

    entropy = token_entropy(f32(logits), temperature=temperature)

    logp = log_softmax(logits / temperature)
    assert_close(entropy, -(np.exp(logp) * logp).sum(axis=-1))


@pytest.mark.parametrize("axis", [None, -1, 0])
def test_masked_sum_and_mean_count_only_masked_entries(axis):
    x = fixed((B, T), seed=4)

    total = masked_sum(f32(x), mx.array(MASK), axis=axis)
    mean = masked_mean(f32(x), mx.array(MASK), axis=axis)

    expected_total = (x * MASK).sum(axis=axis)
    assert_close(total, expected_total)
    assert_close(mean, expected_total / np.maximum(MASK.sum(axis=axis), 1))


def test_masked_mean_of_an_empty_mask_is_zero_not_nan():
    mean = masked_mean(f32(fixed((B, T), seed=5)), mx.zeros((B, T)))

    assert mean.item() == 0.0


def test_masked_reductions_ignore_non_finite_values_at_masked_positions():
    x = fixed((B, T), seed=6)
    with_garbage = np.where(MASK == 1, x, -np.inf)

    total = masked_sum(f32(with_garbage), mx.array(MASK))

    assert_close(total, (x * MASK).sum())


def test_sequence_logprobs_sum_the_completion_tokens_only():
    logprobs = fixed((B, T), seed=7, shift=-2.0)

    sequence = sequence_logprobs(f32(logprobs), mx.array(MASK))

    assert sequence.shape == (B,)
    assert_close(sequence, [logprobs[0, 1:].sum(), logprobs[1, 2]])
