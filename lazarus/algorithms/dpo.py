"""Preference losses on sequence logprobs of (chosen, rejected) completions.

Inputs are per-pair sequence logprobs over completion tokens only (`sequence_logprobs` with the
completion mask): the prompt is shared by both completions, and its tokens never enter the loss.
With h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)):

- DPO, sigmoid (Rafailov et al. 2023, eq. 7):  -log sigma(beta h); with label smoothing e (conservative
  DPO, Mitchell 2023): -(1 - e) log sigma(beta h) - e log sigma(-beta h)
- IPO (Azar et al. 2023, eq. 17):             (h - 1 / (2 beta))^2, with each log-ratio divided by its
                                              completion's length first (TRL, on the IPO authors' advice:
                                              then beta does not depend on length)
- robust DPO (Chowdhury et al. 2024, eq. 9):  ((1 - e) (-log sigma(beta h)) - e (-log sigma(-beta h))) / (1 - 2e),
                                              unbiased under preference labels flipped with rate e
- APO-zero / APO-down (D'Oosterlinck et al. 2024, "Anchored Preference Optimization"; TRL):
      zero: (1 - sigma(beta c)) + sigma(beta l)      down: sigma(beta c) + (1 - sigma(beta (c - l)))
      with c, l the chosen and rejected log-ratios to the reference
- BCO, paired (Jung et al. 2024, "Binary Classifier Optimization"; TRL `bco_pair`):
      -log sigma(beta c - delta) - log sigma(-(beta l - delta)), delta the running mean over training steps of
      each batch's mean implicit reward (beta c and beta l), this batch included (TRL's RunningMoments)
- hinge (SLiC, Zhao et al. 2023):             max(0, 1 - beta h)
- SimPO (Meng et al. 2024, eq. 6):            -log sigma(beta (avg log pi(y_w) - avg log pi(y_l)) - gamma), no reference
- ORPO (Hong et al. 2024, eq. 6-7):           NLL(y_w) - lam * log sigma(log odds(y_w) - log odds(y_l)),
                                              odds(y) = p / (1 - p), p = exp(avg log pi(y))

SimPO and ORPO take length-averaged logprobs (sum over completion tokens / their count).
"""

from __future__ import annotations

import mlx.core as mx

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "apo_zero", "apo_down")


def _log_sigmoid(x: mx.array) -> mx.array:
    return -mx.logaddexp(0.0, -x)


def _log1m_exp(x: mx.array) -> mx.array:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
    return mx.where(x > -0.6931472, mx.log(-mx.expm1(x)), mx.log1p(-mx.exp(x)))


def _preference_metrics(rewards_chosen: mx.array, rewards_rejected: mx.array) -> dict[str, mx.array]:
    rewards_chosen, rewards_rejected = mx.stop_gradient(rewards_chosen), mx.stop_gradient(rewards_rejected)
    return {
        "rewards_chosen": rewards_chosen.mean(),
        "rewards_rejected": rewards_rejected.mean(),
        "reward_margin": (rewards_chosen - rewards_rejected).mean(),
        "reward_accuracy": (rewards_chosen > rewards_rejected).astype(mx.float32).mean(),
    }


def dpo_loss(
    policy_chosen: mx.array,
    policy_rejected: mx.array,
    ref_chosen: mx.array,
    ref_rejected: mx.array,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: mx.array | None = None,
    rejected_lengths: mx.array | None = None,
) -> tuple[mx.array, dict[str, mx.array]]:
    """DPO family on summed completion logprobs [B]: returns (mean loss over pairs, metrics).

    IPO needs `chosen_lengths`/`rejected_lengths` (completion tokens per pair) to length-normalise;
    `label_smoothing` is conservative DPO's smoothing for "sigmoid" and the flip rate for "robust".
    The metrics' implicit rewards are beta * (log pi - log pi_ref) of each completion.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    h = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * _log_sigmoid(beta * h) - label_smoothing * _log_sigmoid(-beta * h)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type 'ipo' needs chosen_lengths and rejected_lengths (length-normalised IPO)")
        h = chosen_logratio / mx.maximum(chosen_lengths, 1.0) - rejected_logratio / mx.maximum(rejected_lengths, 1.0)
        losses = mx.square(h - 1.0 / (2.0 * beta))
    elif loss_type == "robust":
        losses = (-(1.0 - label_smoothing) * _log_sigmoid(beta * h)
                  + label_smoothing * _log_sigmoid(-beta * h)) / (1.0 - 2.0 * label_smoothing)
    elif loss_type == "apo_zero":
        losses = (1.0 - mx.sigmoid(beta * chosen_logratio)) + mx.sigmoid(beta * rejected_logratio)
    elif loss_type == "apo_down":
        losses = mx.sigmoid(beta * chosen_logratio) + (1.0 - mx.sigmoid(beta * h))
    else:  # hinge
        losses = mx.maximum(1.0 - beta * h, 0.0)
    return losses.mean(), _preference_metrics(beta * chosen_logratio, beta * rejected_logratio)


def bco_pair_loss(
    policy_chosen: mx.array,
    policy_rejected: mx.array,
    ref_chosen: mx.array,
    ref_rejected: mx.array,
    running: mx.array,
    *,
    beta: float = 0.1,
) -> tuple[mx.array, dict[str, mx.array]]:
    """BCO on pairs, summed completion logprobs [B]: a binary classifier of chosen (1) vs rejected (0) by the
    implicit reward, thresholded at delta. `running` = [mean, count]: the running mean of the batch-mean
    implicit rewards of the `count` steps before; delta folds this batch's mean in (no gradient through it).
    Metrics add `bco_batch_reward` (this batch's mean, for the caller's running mean) and `bco_delta`."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    batch_reward = mx.stop_gradient(mx.concatenate([chosen_rewards, rejected_rewards]).mean())
    mean, count = running[0], running[1]
    delta = (mean * count + batch_reward) / (count + 1.0)
    losses = -_log_sigmoid(chosen_rewards - delta) - _log_sigmoid(-(rejected_rewards - delta))
    metrics = _preference_metrics(chosen_rewards, rejected_rewards)
    metrics.update(bco_batch_reward=batch_reward, bco_delta=delta)
    return losses.mean(), metrics


def simpo_loss(
    policy_chosen_avg: mx.array, policy_rejected_avg: mx.array, *, beta: float = 2.0, gamma: float = 0.5
) -> tuple[mx.array, dict[str, mx.array]]:
    """SimPO: reference-free, on average completion logprobs [B], with target reward margin gamma."""
    losses = -_log_sigmoid(beta * (policy_chosen_avg - policy_rejected_avg) - gamma)
    return losses.mean(), _preference_metrics(beta * policy_chosen_avg, beta * policy_rejected_avg)


def orpo_loss(
    policy_chosen_avg: mx.array, policy_rejected_avg: mx.array, chosen_nll: mx.array, *, lam: float = 0.1
) -> tuple[mx.array, dict[str, mx.array]]:
    """ORPO: SFT loss on the chosen completion plus lam * odds-ratio loss; inputs [B].

    `chosen_nll` is the chosen completion's token-mean negative log-likelihood (usually
    -policy_chosen_avg; a separate input so a trainer can use its SFT loss as is).
    """
    log_odds_ratio = (policy_chosen_avg - policy_rejected_avg) - (
        _log1m_exp(policy_chosen_avg) - _log1m_exp(policy_rejected_avg)
    )
    losses = chosen_nll - lam * _log_sigmoid(log_odds_ratio)
    metrics = _preference_metrics(lam * policy_chosen_avg, lam * policy_rejected_avg)
    metrics["log_odds_ratio"] = mx.stop_gradient(log_odds_ratio).mean()
    metrics["nll"] = mx.stop_gradient(chosen_nll).mean()
    return losses.mean(), metrics
