"""Action distributions of the experts' heads, as pure math on arrays (mx.array, or numpy for the rollout).

Categorical: log pi(a) = log_softmax(logits)[a]; entropy -sum p log p.

Tanh-squashed Gaussian (SAC, Haarnoja et al. 2018, appendix C): u ~ N(mean, std), a = tanh(u), and

    log pi(a) = sum_i [ log N(u_i; mean_i, std_i) - log(1 - tanh(u_i)^2) ]
    log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u))       (the stable form of the log-det correction)

The rollout stores u (the pre-tanh sample), not a: atanh of an action near +-1 loses the precision that
the ratio pi/pi_old needs. The affine map from a in (-1, 1) to the env's [low, high] adds a constant
-sum log((high - low) / 2) to the density of the env action; it cancels in every ratio and is left out.
The entropy bonus uses the Gaussian's entropy (the squashed one has no closed form), as CleanRL does.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

LOG_2PI = math.log(2 * math.pi)
LOG_2 = math.log(2.0)


def categorical_logprob(logits: mx.array, actions: mx.array) -> mx.array:
    """logits [..., A], integer actions [...] -> log pi(actions) [...]."""
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return mx.take_along_axis(logp, actions.astype(mx.int32)[..., None], axis=-1)[..., 0]


def categorical_entropy(logits: mx.array) -> mx.array:
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return -(mx.exp(logp) * logp).sum(axis=-1)


def tanh_log_det(u: mx.array) -> mx.array:
    """log(1 - tanh(u)^2), elementwise, without cancellation for large |u|."""
    return 2.0 * (LOG_2 - u - mx.logaddexp(mx.zeros_like(u), -2.0 * u))


def squashed_gaussian_logprob(mean: mx.array, log_std: mx.array, u: mx.array) -> mx.array:
    """mean, log_std, u [..., D] -> log density of a = tanh(u) [...], the log-det correction included."""
    gaussian = -0.5 * mx.square((u - mean) / mx.exp(log_std)) - log_std - 0.5 * LOG_2PI
    return (gaussian - tanh_log_det(u)).sum(axis=-1)


def gaussian_entropy(log_std: mx.array) -> mx.array:
    """Entropy of N(., exp(log_std)) summed over the last axis."""
    return (log_std + 0.5 * (1.0 + LOG_2PI)).sum(axis=-1)


# numpy twins for the rollout step (same formulas), checked against the above by the ratio test. They compute
# in float64 and return float32: numpy's float32 exp/log take SIMD or scalar paths depending on an array's
# length, which can move the last bit, and a rollout split over env workers must equal the one-process one.


def np_categorical_logprob(logits: np.ndarray, actions: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return np.take_along_axis(logp, actions.astype(np.int64)[..., None], axis=-1)[..., 0].astype(np.float32)


def np_squashed_gaussian_logprob(mean: np.ndarray, log_std: np.ndarray, u: np.ndarray) -> np.ndarray:
    mean, log_std, u = mean.astype(np.float64), log_std.astype(np.float64), u.astype(np.float64)
    gaussian = -0.5 * np.square((u - mean) / np.exp(log_std)) - log_std - 0.5 * LOG_2PI
    log_det = 2.0 * (LOG_2 - u - np.logaddexp(0.0, -2.0 * u))
    return (gaussian - log_det).sum(axis=-1).astype(np.float32)
