"""Bradley–Terry reward-model loss on the scalar rewards of (chosen, rejected) completions.

The reward model assigns each completion one score r; the probability that the chosen one is
preferred is sigma(r_w - r_l) (Bradley & Terry 1952; as the reward model of InstructGPT, Ouyang et
al. 2022, eq. 1). The loss is the negative log-likelihood of the observed preferences:

    L = -log sigma(r_w - r_l - m)  +  c * (r_w + r_l)^2

- m, an optional per-pair margin (Llama 2, Touvron et al. 2023, eq. 2; TRL `RewardTrainer`'s `margin` column).
- c, `center_rewards_coefficient` (TRL `RewardTrainer`, after Eisenstein et al. 2023): keeps rewards
  centred on 0 so that several reward models, or one across runs, stay on one scale.
"""

from __future__ import annotations

import mlx.core as mx


def bradley_terry_loss(
    rewards_chosen: mx.array,
    rewards_rejected: mx.array,
    *,
    margin: mx.array | None = None,
    center_coef: float = 0.0,
) -> tuple[mx.array, dict[str, mx.array]]:
    """Mean over pairs of -log sigma(r_w - r_l - margin) + center_coef * (r_w + r_l)^2; inputs [B]."""
    if rewards_chosen.shape != rewards_rejected.shape or rewards_chosen.ndim != 1:
        raise ValueError(f"rewards_chosen {tuple(rewards_chosen.shape)} and rewards_rejected "
                         f"{tuple(rewards_rejected.shape)} must both be [B]")
    if center_coef < 0:
        raise ValueError(f"center_coef must be >= 0, got {center_coef}")
    rewards_chosen = rewards_chosen.astype(mx.float32)
    rewards_rejected = rewards_rejected.astype(mx.float32)
    difference = rewards_chosen - rewards_rejected
    if margin is not None:
        difference = difference - margin.astype(mx.float32)
    losses = mx.logaddexp(0.0, -difference)  # -log sigma(d), stable for large |d|
    if center_coef:
        losses = losses + center_coef * mx.square(rewards_chosen + rewards_rejected)
    chosen, rejected = mx.stop_gradient(rewards_chosen), mx.stop_gradient(rewards_rejected)
    metrics = {
        "pairwise_accuracy": (chosen > rejected).astype(mx.float32).mean(),
        "reward_margin": (chosen - rejected).mean(),
        "rewards_chosen": chosen.mean(),
        "rewards_rejected": rejected.mean(),
    }
    return losses.mean(), metrics
