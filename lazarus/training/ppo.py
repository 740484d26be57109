"""PPO learner: token-level GAE advantages from a value head on the policy's hidden states.

One update, on trajectories sampled and scored by rollout actors (as for GRPO):

    rewards_t   the sequence reward on the last completion token, minus beta * k1(policy || ref) per token
    A, returns  GAE(gamma, lambda) against the old values, advantages whitened over the batch
    update      `num_iterations` epochs of clipped surrogate + vf_coef * clipped value loss
                - entropy_coef * entropy; stop early when approx KL exceeds `target_kl`

The value head shares the policy's trunk (one forward pass gives logits and values); it is trained
with the policy by the same optimizer and saved with every checkpoint (`value_head.safetensors`).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lazarus.algorithms.advantages import gae, whiten
from lazarus.algorithms.logprobs import masked_mean, token_entropy, token_logprobs
from lazarus.algorithms.ppo import approx_kl, entropy_bonus, ppo_policy_loss, value_loss
from lazarus.data.trajectory import Trajectory
from lazarus.models.value_head import ValueHead, hidden_size, hidden_states, logits_from_hidden
from lazarus.training.rl import RLLearner, collate


class PolicyAndValue(nn.Module):
    """The trainable pair the optimizer sees: policy (or its adapters) and value head."""

    def __init__(self, policy: nn.Module, value_head: ValueHead):
        super().__init__()
        self.policy = policy
        self.value_head = value_head

    def __call__(self, inputs: mx.array) -> tuple[mx.array, mx.array]:
        hidden = hidden_states(self.policy, inputs)
        return logits_from_hidden(self.policy, hidden), self.value_head(hidden)


class PPOLearner(RLLearner):
    def __init__(self, cfg, model, tokenizer, reference=None, eval_prompts=None, reward_functions=None):
        self.value_head = ValueHead(hidden_size(model))
        self.both = PolicyAndValue(model, self.value_head)
        super().__init__(cfg, model, tokenizer, reference, eval_prompts, reward_functions)
        self.name = "ppo"
        self.extra_modules = {"value_head": self.value_head}
        self.optimizer_target = self.both
        self.stepper = self.make_stepper(self.ppo_loss, model=self.both)

    def _learn(self, trajectories: list[Trajectory]) -> dict:
        rl = self.cfg.rl
        batch = collate(trajectories, self.pad_id)
        _, old_values = self.both(batch.inputs)
        old_values = mx.stop_gradient(old_values)
        token_rewards = self.token_rewards(batch)
        advantages, returns = gae(token_rewards, old_values, batch.mask, rl.gamma, rl.lam)
        advantages = whiten(advantages, batch.mask)
        mx.eval(old_values, advantages, returns)
        history, epochs = [], 0
        for _ in range(rl.num_iterations):
            loss, metrics = self.stepper.accumulate(batch.inputs, batch.targets, batch.mask, batch.behavior_logprobs,
                                                    advantages, returns, old_values)
            grad_norm = self.stepper.apply()
            epochs += 1
            history.append({"loss": loss.item(), **{k: v.item() for k, v in metrics.items()}})
            if rl.target_kl is not None and history[-1]["approx_kl"] > rl.target_kl:
                break  # the policy moved too far from the behavior policy: stop this batch
        summary = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
        lag = [self.policy_version - t.policy_version for t in trajectories]
        summary.update(staleness_mean=float(np.mean(lag)), staleness_max=float(np.max(lag)))
        summary.update(grad_norm=grad_norm, ppo_epochs=epochs, learning_rate=float(self.optimizer.learning_rate),
                       advantage_mean=masked_mean(advantages, batch.mask).item(),
                       value_mean=masked_mean(old_values, batch.mask).item(),
                       return_mean=masked_mean(returns, batch.mask).item(),
                       reference_forward_passes=self.reference_forward_passes)
        return summary

    def token_rewards(self, batch) -> mx.array:
        """Sequence reward on each completion's last token; per-token KL penalty when beta > 0."""
        mask = np.array(batch.mask)
        rewards = np.zeros_like(mask)
        rewards_seq = np.array(batch.rewards)
        for i in range(mask.shape[0]):
            positions = np.nonzero(mask[i])[0]
            if len(positions):
                rewards[i, positions[-1]] = rewards_seq[i]
        token_rewards = mx.array(rewards)
        if self.cfg.rl.beta > 0:
            ref = self.reference_logprobs(batch)
            token_rewards = token_rewards - self.cfg.rl.beta * (batch.behavior_logprobs - ref) * batch.mask
        return token_rewards

    def ppo_loss(self, both, inputs, targets, mask, behavior_logprobs, advantages, returns, old_values):
        rl = self.cfg.rl
        logits, values = both(inputs)
        logprobs = token_logprobs(logits, targets, self.temperature)
        policy_loss, metrics = ppo_policy_loss(logprobs, behavior_logprobs, advantages, mask,
                                               clip_range=rl.epsilon_low, clip_range_high=rl.epsilon_high)
        v_loss, v_metrics = value_loss(values, old_values, returns, mask, clip_range_value=rl.value_clip)
        entropy = entropy_bonus(token_entropy(logits, self.temperature), mask)
        loss = policy_loss + rl.vf_coef * v_loss - rl.entropy_coef * entropy
        return loss, {**metrics, **v_metrics, "policy_loss": policy_loss, "value_loss": v_loss,
                      "entropy": mx.stop_gradient(entropy),
                      "approx_kl": approx_kl(mx.stop_gradient(logprobs), behavior_logprobs, mask)}
