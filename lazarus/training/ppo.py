"""PPO learner: token-level GAE advantages from a value head on the policy's hidden states.

One update, on trajectories sampled and scored by rollout actors (as for GRPO):

    rewards_t   the sequence reward on the last completion token, minus beta * KL_t per token
                (rl.kl_placement "reward", PPO's default; "loss" adds beta * KL to the policy loss instead);
                in multi-turn episodes each env step's reward sits on the last token of the turn it scored
    A, returns  GAE(gamma, lambda) against the old values, with dones where the trajectory says an episode
                ended (multi-turn); advantages whitened over the batch (Bessel)
    update      `num_iterations` epochs; each takes one optimizer step per mini-batch of rl.mini_batch_size
                prompts (micro-batches of rl.micro_batch_size completions accumulate) of clipped surrogate
                (dual-clip with rl.clip_ratio_c) + vf_coef * clipped value loss - entropy_coef * entropy,
                both aggregated by rl.loss_agg_mode (token-mean when null); stop early when an epoch's
                approx KL exceeds `target_kl`

The value head shares the policy's trunk: one trunk pass gives the hidden states of the completion columns,
which the LM head (chunk by chunk, `models/forward.py: hidden_token_logprobs`) and the value head both read;
as in GRPO, each group's prompt runs once for its completions (`RLLearner.micro_batch_columns`). The head is
saved with every checkpoint (`value_head.safetensors`). With `rl.value_lr` it has its own optimizer (the same kind
and schedule as the policy's, at that learning rate), as TRL's and verl's separate critic optimizers.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from lazarus.algorithms.advantages import gae, whiten
from lazarus.algorithms.kl import kl_shaped_token_rewards
from lazarus.algorithms.logprobs import masked_mean
from lazarus.algorithms.ppo import approx_kl, entropy_bonus, ppo_policy_loss, value_loss
from lazarus.data.trajectory import Trajectory
from lazarus.models.forward import SharedPrefix, hidden_token_logprobs, last_hidden_states
from lazarus.models.value_head import PolicyWithValue, ValueHead, hidden_size, hidden_states
from lazarus.training.optim import build_optimizer
from lazarus.training.rl import (RLLearner, TrajectoryBatchError, collate, optimizer_steps_per_update,
                                 update_plan)


def is_policy_parameter(path: str, _weight) -> bool:
    return not path.startswith("value_head.")


class PPOLearner(RLLearner):
    def __init__(self, cfg, model, tokenizer, reference=None, eval_prompts=None, reward_functions=None):
        self.value_head = ValueHead(hidden_size(model))
        self.both = PolicyWithValue(model, self.value_head)
        super().__init__(cfg, model, tokenizer, reference, eval_prompts, reward_functions)
        self.name = "ppo"
        self.loss_agg_mode = cfg.rl.loss_agg_mode or "token-mean"
        self.extra_modules = {"value_head": self.value_head}
        self.optimizer_target = self.both
        if cfg.rl.value_lr is not None:
            value_optimizer = build_optimizer(cfg.optim, cfg.training.max_steps * optimizer_steps_per_update(cfg),
                                              learning_rate=cfg.rl.value_lr)
            # The policy's optimizer first: `optimizer.learning_rate` (logged) stays the policy's.
            self.optimizer = optim.MultiOptimizer([self.optimizer, value_optimizer], [is_policy_parameter])
        self.stepper = self.make_stepper(self.ppo_loss, model=self.both)

    def _learn(self, trajectories: list[Trajectory]) -> dict:
        rl = self.cfg.rl
        batch = collate(trajectories, self.pad_id)
        old_values = self.old_values(batch)
        reference = self.reference_logprobs(batch) if rl.beta > 0 else None
        advantages, returns = self.advantages_and_returns(trajectories, batch, old_values, reference)
        mx.eval(old_values, advantages, returns)
        plan = update_plan(batch.inputs.shape[0], self.group_size, rl.mini_batch_size, rl.micro_batch_size,
                           self.cfg.training.grad_accum_steps)
        tokens_per_row = np.array(batch.mask.sum(axis=-1))
        history, epochs, optimizer_steps = [], 0, 0
        for _ in range(rl.num_iterations):
            epoch = []
            for mini_batch in plan:
                rows_in_step = np.concatenate(mini_batch)
                for idx in mini_batch:
                    inputs, columns, prefix = self.micro_batch_columns(batch, idx)
                    ref = columns(reference) if reference is not None and self.loss_beta else None
                    loss, metrics = self.stepper.accumulate(
                        inputs, *map(columns, (batch.targets, batch.mask, batch.behavior_logprobs, advantages,
                                               returns, old_values)), ref, prefix,
                        weight=self.micro_batch_weight(tokens_per_row, idx, rows_in_step))
                    epoch.append({"loss": loss.item(), **{k: v.item() for k, v in metrics.items()}})
                grad_norm = self.stepper.apply()
                optimizer_steps += 1
            epochs += 1
            history += epoch
            if rl.target_kl is not None and np.mean([h["approx_kl"] for h in epoch]) > rl.target_kl:
                break  # the policy moved too far from the behavior policy: stop this batch
        summary = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
        lag = [self.policy_version - t.policy_version for t in trajectories]
        summary.update(staleness_mean=float(np.mean(lag)), staleness_max=float(np.max(lag)))
        summary.update(grad_norm=grad_norm, ppo_epochs=epochs, optimizer_steps=optimizer_steps,
                       learning_rate=float(self.optimizer.learning_rate),
                       advantage_mean=masked_mean(advantages, batch.mask).item(),
                       value_mean=masked_mean(old_values, batch.mask).item(),
                       return_mean=masked_mean(returns, batch.mask).item(),
                       reference_forward_passes=self.reference_forward_passes)
        return summary

    def old_values(self, batch) -> mx.array:
        """[N, L] the value head's values before the update, in collate's layout: the trunk and the head on the
        hidden states, no LM head (through each group's prompt once where the loss shares it)."""
        suffix = self.suffix_columns(batch, np.arange(batch.inputs.shape[0]))
        if suffix is not None:
            hidden = last_hidden_states(self.model, suffix.take(batch.inputs), suffix.width, suffix.prefix)
            return suffix.put(mx.stop_gradient(self.value_head(hidden)), batch.targets.shape)
        return mx.stop_gradient(self.value_head(hidden_states(self.model, batch.inputs)))

    def advantages_and_returns(self, trajectories: list[Trajectory], batch, old_values: mx.array,
                               reference: mx.array | None) -> tuple[mx.array, mx.array]:
        """GAE over the token rewards, with the episode ends the trajectories carry; advantages whitened."""
        rl = self.cfg.rl
        step_rewards, dones = episode_layout(trajectories, batch.mask.shape[1])
        token_rewards = self.token_rewards(batch, reference, step_rewards)
        advantages, returns = gae(token_rewards, old_values, batch.mask, rl.gamma, rl.lam, dones=mx.array(dones))
        return whiten(advantages, batch.mask), returns

    def token_rewards(self, batch, reference: mx.array | None, step_rewards: np.ndarray | None = None) -> mx.array:
        """Sequence reward on each completion's last token; minus beta * KL_t per token when the KL is in
        the reward (the KL of the sampling policy, behaviour logprobs, to the reference). `step_rewards` [B,T]
        (multi-turn env steps) move their share of the sequence reward onto the tokens that earned it."""
        beta = self.cfg.rl.beta if self.kl_in_reward else 0.0
        if reference is None:
            reference = batch.behavior_logprobs  # KL 0: only the score
        rewards = batch.rewards
        if step_rewards is not None:
            step_rewards = mx.array(step_rewards)
            rewards = rewards - step_rewards.sum(axis=-1)  # what is left: the final score
        token_rewards = kl_shaped_token_rewards(rewards, batch.behavior_logprobs, reference, batch.mask, beta,
                                                self.kl_estimator)
        return token_rewards if step_rewards is None else token_rewards + step_rewards

    def ppo_loss(self, both, inputs, targets, mask, behavior_logprobs, advantages, returns, old_values,
                 ref_logprobs=None, prefix: SharedPrefix | None = None):
        """The clipped surrogate, value and entropy terms on the loss's columns (`micro_batch_columns`): one trunk
        pass, then the LM head chunk by chunk and the value head, both on the hidden states of those columns."""
        rl = self.cfg.rl
        hidden = last_hidden_states(both.policy, inputs, targets.shape[1], prefix)
        logprobs, entropy = hidden_token_logprobs(both.policy, hidden, targets, self.temperature, with_entropy=True)
        values = both.value_head(hidden)
        max_length = self.cfg.generation.max_new_tokens  # seq-mean-token-sum-norm's divisor, whatever the columns
        policy_loss, metrics = ppo_policy_loss(logprobs, behavior_logprobs, advantages, mask,
                                               clip_range=rl.epsilon_low, clip_range_high=rl.epsilon_high,
                                               loss_agg_mode=self.loss_agg_mode, clip_ratio_c=rl.clip_ratio_c,
                                               ref_logprobs=ref_logprobs, beta=self.loss_beta if ref_logprobs
                                               is not None else 0.0, kl_estimator=self.kl_estimator,
                                               max_completion_length=max_length)
        v_loss, v_metrics = value_loss(values, old_values, returns, mask, clip_range_value=rl.value_clip,
                                       loss_agg_mode=self.loss_agg_mode, max_completion_length=max_length)
        entropy = entropy_bonus(entropy, mask)
        loss = policy_loss + rl.vf_coef * v_loss - rl.entropy_coef * entropy
        return loss, {**metrics, **v_metrics, "policy_loss": policy_loss, "value_loss": v_loss,
                      "entropy": mx.stop_gradient(entropy),
                      "approx_kl": approx_kl(mx.stop_gradient(logprobs), behavior_logprobs, mask)}


def episode_layout(trajectories: list[Trajectory], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Env step rewards and episode ends of multi-turn trajectories as [B, width] arrays in `collate`'s layout
    (completion index i is column len(prompt) - 1 + i); zeros for single-turn trajectories.

    They come from `info["step_rewards"]` ([[i, r], ...]) and `info["episode_ends"]` ([i, ...]), which
    `env.multiturn` writes; an index outside the completion or on an env token is an error naming the group.
    """
    step_rewards = np.zeros((len(trajectories), width), np.float32)
    dones = np.zeros((len(trajectories), width), np.float32)
    for row, t in enumerate(trajectories):
        start = len(t.prompt_ids) - 1
        for name, entries in (("step_rewards", t.info.get("step_rewards", [])),
                              ("episode_ends", t.info.get("episode_ends", []))):
            for entry in entries:
                index, value = (entry[0], entry[1]) if name == "step_rewards" else (entry, 1.0)
                if (not isinstance(index, int) or not 0 <= index < len(t.completion_ids)
                        or not t.loss_mask[index] or not isinstance(value, (int, float)) or not math.isfinite(value)):
                    raise TrajectoryBatchError(f"trajectory of group {t.group_id} (actor {t.actor_id or '?'}): "
                                               f"info.{name} entry {entry!r} is not a model token of its "
                                               f"{len(t.completion_ids)} completion tokens with a finite value")
                if name == "step_rewards":
                    step_rewards[row, start + index] += value
                else:
                    dones[row, start + index] = 1.0
    return step_rewards, dones
