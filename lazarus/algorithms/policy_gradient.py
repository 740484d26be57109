"""Clipped policy-gradient loss of the GRPO family: GRPO, DAPO, Dr. GRPO and GSPO in one function.

For completion i, token t, with advantage A_{i,t} (one per sequence is broadcast over its tokens):

    ratio_{i,t} = pi(y_t) / pi_behavior(y_t)        behavior = the policy that sampled y, never the reference
    L_{i,t}     = -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A) + beta * KL_{i,t}

- GRPO (Shao et al. 2024, DeepSeekMath, eq. 3): eps_low = eps_high, KL to the reference with the k3
  estimator, loss = mean over sequences of each sequence's token mean (loss_type "grpo").
- DAPO (Yu et al. 2025): clip-higher (eps_high > eps_low, e.g. 0.28 / 0.2) so low-probability tokens
  can grow; token-level mean over the whole batch ("dapo"; "bnpo" is the same normalisation).
- Dr. GRPO (Liu et al. 2025): token sum divided by a constant, B * max_completion_length ("dr_grpo"),
  so neither length nor group std biases the gradient.
- GSPO (Zheng et al. 2025): importance_sampling_level="sequence" uses the length-normalised sequence
  ratio s_i = exp(mean_t log(pi / pi_behavior)) at every token, in the paper's GSPO-token form
      s_{i,t} = sg[s_i] * pi(y_t) / sg[pi(y_t)]
  whose value is s_i and whose gradient, for advantages constant over a sequence, equals GSPO's.

Off-policy (decoupled PPO; Hilton et al. 2022, "Batch size-invariance for policy optimization", as AReaL
and verl use it for asynchronous RL): with `proximal_logprobs` (the learner's policy before this batch),
the clip is taken around the proximal policy and the behaviour policy enters only as a truncated
importance weight, w_{i,t} = min(pi_prox / pi_behavior, importance_cap), held constant:

    L_{i,t} = -w_{i,t} min(r A, clip(r, 1 - eps_low, 1 + eps_high) A),   r = pi / pi_prox

On-policy pi_prox = pi_behavior, w = 1, and this is the loss above.

Where the clip is active (ratio below 1 - eps_low with A < 0, or above 1 + eps_high with A > 0) the
token gets no gradient; those fractions are reported as clip_fraction_low / clip_fraction_high. Under
GSPO the ratio belongs to the sequence, so the fractions count clipped *sequences*, as TRL does.

Safety and the knobs users bring from TRL and verl:
- log-ratios are clamped to [-20, 20] before exp (verl `compute_policy_loss`), so a stale or diverged
  trajectory gives a finite loss and gradient (a clamped token gets no gradient);
- `delta` (TRL `GRPOConfig.delta`, two-sided GRPO, after INTELLECT-2): the unclipped term uses
  min(ratio, delta), bounding the loss of a negative-advantage token whose ratio explodes;
- `clip_ratio_c` (verl dual-clip PPO, Ye et al. 2020 "Mastering Complex Control in MOBA Games"): for
  A < 0 the loss is at most -A * clip_ratio_c (> 1); reported as clip_fraction_dual;
- `loss_agg_mode` (verl's names, `aggregate_loss`) overrides `loss_type` when given.
"""

from __future__ import annotations

import mlx.core as mx

from lazarus.algorithms.kl import KL_ESTIMATORS, LOG_RATIO_CLAMP, kl_penalty
from lazarus.algorithms.logprobs import LOSS_AGG_MODES, aggregate_loss, masked_mean, masked_sum

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def policy_gradient_loss(
    logprobs: mx.array,
    behavior_logprobs: mx.array,
    advantages: mx.array,
    mask: mx.array,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: str = "grpo",
    importance_sampling_level: str = "token",
    max_completion_length: int | None = None,
    ref_logprobs: mx.array | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    proximal_logprobs: mx.array | None = None,
    importance_cap: float | None = None,
    delta: float | None = None,
    clip_ratio_c: float | None = None,
    loss_agg_mode: str | None = None,
) -> tuple[mx.array, dict[str, mx.array]]:
    """Clipped surrogate loss over completion tokens: returns (scalar loss, metrics).

    logprobs, behavior_logprobs, mask, ref_logprobs: [B,T]; advantages: [B] or [B,T].
    `ref_logprobs` is needed only when beta != 0 (with beta == 0 it is used for the kl metric if given).
    `proximal_logprobs` [B,T] (decoupled PPO) and `importance_cap` (truncation of pi_prox / pi_behavior,
    None = no truncation) are for off-policy batches.
    """
    _check_arguments(logprobs, behavior_logprobs, advantages, mask, ref_logprobs, beta,
                     epsilon_low, epsilon_high, loss_type, importance_sampling_level, kl_estimator, proximal_logprobs)
    if importance_cap is not None and importance_cap <= 0:
        raise ValueError(f"importance_cap must be > 0, got {importance_cap}")
    if delta is not None and delta <= 1.0 + epsilon_high:
        raise ValueError(f"delta must be > 1 + epsilon_high = {1.0 + epsilon_high}, got {delta}")
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1, got {clip_ratio_c}")
    if loss_agg_mode is not None and loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {loss_agg_mode!r}")
    # Padding may hold any logprob (even -inf); zeroing it keeps exp() finite in the loss and its gradient.
    valid = mask.astype(mx.bool_)
    logprobs = mx.where(valid, logprobs, 0.0)
    behavior_logprobs = mx.where(valid, behavior_logprobs, 0.0)
    if ref_logprobs is not None:
        ref_logprobs = mx.where(valid, ref_logprobs, 0.0)
    mask = valid.astype(mx.float32)
    advantages = advantages.astype(mx.float32)
    advantages = advantages[:, None] if advantages.ndim == 1 else mx.where(valid, advantages, 0.0)

    weight = None
    if proximal_logprobs is not None:
        proximal_logprobs = mx.where(valid, mx.stop_gradient(proximal_logprobs), 0.0)
        weight = mx.exp(mx.clip(proximal_logprobs - behavior_logprobs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        if importance_cap is not None:
            weight = mx.minimum(weight, importance_cap)
        behavior_logprobs = proximal_logprobs  # the clip is around the proximal policy
    log_ratio = logprobs - behavior_logprobs
    if importance_sampling_level == "sequence":
        sequence_log_ratio = masked_mean(log_ratio, mask, axis=-1)[:, None]
        log_ratio = mx.stop_gradient(sequence_log_ratio) + logprobs - mx.stop_gradient(logprobs)
    ratio = mx.exp(mx.clip(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    clipped_ratio = mx.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    unclipped_ratio = ratio if delta is None else mx.minimum(ratio, delta)
    per_token_loss = -mx.minimum(unclipped_ratio * advantages, clipped_ratio * advantages)
    dual_clipped = mx.zeros_like(per_token_loss)
    if clip_ratio_c is not None:
        dual_bound = -advantages * clip_ratio_c
        dual_clipped = ((advantages < 0) & (per_token_loss > dual_bound)).astype(mx.float32)
        per_token_loss = mx.where(advantages < 0, mx.minimum(per_token_loss, dual_bound), per_token_loss)
    if weight is not None:
        per_token_loss = weight * per_token_loss

    kl = None if ref_logprobs is None else kl_penalty(logprobs, ref_logprobs, kl_estimator)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * kl

    if loss_agg_mode is not None:
        loss = aggregate_loss(per_token_loss, mask, loss_agg_mode, normalizer=max_completion_length)
    elif loss_type == "grpo":
        loss = masked_mean(per_token_loss, mask, axis=-1).mean()
    elif loss_type in ("bnpo", "dapo"):
        loss = masked_mean(per_token_loss, mask)
    else:  # dr_grpo
        batch_size, length = per_token_loss.shape
        loss = masked_sum(per_token_loss, mask) / (batch_size * (max_completion_length or length))

    ratio = mx.stop_gradient(ratio)
    clipped_low = ((ratio < 1.0 - epsilon_low) & (advantages < 0)).astype(mx.float32)
    clipped_high = ((ratio > 1.0 + epsilon_high) & (advantages > 0)).astype(mx.float32)
    fraction = _sequence_fraction if importance_sampling_level == "sequence" else masked_mean
    metrics = {
        "clip_fraction_low": fraction(clipped_low, mask),
        "clip_fraction_high": fraction(clipped_high, mask),
        "clip_fraction": fraction(clipped_low + clipped_high, mask),
        "clip_fraction_dual": fraction(dual_clipped, mask),
        "kl": mx.array(0.0) if kl is None else masked_mean(mx.stop_gradient(kl), mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": mx.where(valid, ratio, 0.0).max(),
    }
    if weight is not None:
        metrics["behavior_weight_mean"] = masked_mean(weight, mask)
        metrics["behavior_weight_max"] = mx.where(valid, weight, 0.0).max()
    return loss, metrics


def _sequence_fraction(flags: mx.array, mask: mx.array) -> mx.array:
    """The fraction of sequences (with at least one valid token) flagged at any valid token."""
    has_tokens = mask.sum(axis=-1) > 0
    flagged = mx.where(mask.astype(mx.bool_), flags, 0.0).max(axis=-1)
    return flagged.sum() / mx.maximum(has_tokens.sum(), 1).astype(mx.float32)


def _check_arguments(logprobs, behavior_logprobs, advantages, mask, ref_logprobs, beta,
                     epsilon_low, epsilon_high, loss_type, importance_sampling_level, kl_estimator,
                     proximal_logprobs=None) -> None:
    """Shapes and options, checked before any math so a wrong call fails with the field's name."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, "
                         f"got {importance_sampling_level!r}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    if not 0.0 <= epsilon_low < 1.0:
        raise ValueError(f"epsilon_low must be in [0, 1), got {epsilon_low}")
    if epsilon_high < 0.0:
        raise ValueError(f"epsilon_high must be >= 0, got {epsilon_high}")
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} needs ref_logprobs (set beta=0 to train without a reference)")
    shape = tuple(logprobs.shape)
    if len(shape) != 2:
        raise ValueError(f"logprobs must be [B,T], got shape {shape}")
    for name, array in (("behavior_logprobs", behavior_logprobs), ("mask", mask), ("ref_logprobs", ref_logprobs),
                        ("proximal_logprobs", proximal_logprobs)):
        if array is not None and tuple(array.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(array.shape)}, expected {shape} like logprobs")
    if tuple(advantages.shape) not in (shape[:1], shape):
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}, expected {shape[:1]} or {shape}")
