"""Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL
Divergence", 2020, http://joschu.net/blog/kl-approx.html).

With log r = log pi_ref(y) - log pi(y) for a token y sampled from pi:
    k1 = -log r                  unbiased, high variance, can be negative
    k2 = (log r)^2 / 2           biased, low variance, never negative
    k3 = (r - 1) - log r         unbiased, low variance, never negative (GRPO's choice, DeepSeekMath eq. 4)
"""

from __future__ import annotations

import mlx.core as mx

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logprobs: mx.array, ref_logprobs: mx.array, estimator: str = "k3") -> mx.array:
    """Per-token KL estimate of the policy (`logprobs`, the sampling side) from the reference."""
    log_r = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r * log_r
    if estimator == "k3":
        # expm1 keeps r - 1 exact near r = 1; the clamp removes the last rounding below 0.
        return mx.maximum(mx.expm1(log_r) - log_r, 0.0)
    raise ValueError(f"kl estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
