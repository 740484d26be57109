"""RL trainer: GRPO, RLOO, REINFORCE++ (and PPO, see ppo.py), generating in-process with the engine.

One step reads like the algorithm in the papers:

    sample      n completions per prompt with the current policy; behavior logprobs recorded as sampled
    score       reward functions (TRL signature) -> one total reward per completion
    advantages  group-normalized (GRPO), leave-one-out (RLOO) or batch-normalized (REINFORCE++)
    update      `num_iterations` optimizer steps of the clipped surrogate against the behavior logprobs

`rollout` produces `Trajectory` records and `learn` consumes them, so the distributed runtime can run
the two halves in different processes unchanged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lazarus.algorithms.advantages import (group_normalized_advantages, reinforce_pp_advantages,
                                           rloo_advantages)
from lazarus.algorithms.logprobs import masked_mean, token_entropy, token_logprobs
from lazarus.algorithms.policy_gradient import policy_gradient_loss
from lazarus.config import Config
from lazarus.data.batching import BatchIterator
from lazarus.data.records import PromptRecord
from lazarus.data.tokenize import encode_prompt
from lazarus.data.trajectory import RolloutTask, SamplingSettings, Trajectory
from lazarus.env.rewards import RewardFunction
from lazarus.env.rollout import rollout
from lazarus.inference.engine import Engine
from lazarus.inference.sampling import SamplingParams
from lazarus.models.lora import adapters_disabled, has_lora
from lazarus.training.base import Trainer, pad_length
from lazarus.training.evaluate import evaluate


@dataclass
class RolloutBatch:
    """Trajectories collated into right-padded arrays for the learner (targets are inputs shifted by one)."""

    inputs: mx.array  # [N, L] token ids
    targets: mx.array  # [N, L]
    mask: mx.array  # [N, L] 1 at completion tokens the loss trains on
    behavior_logprobs: mx.array  # [N, L]
    rewards: mx.array  # [N]
    num_tokens: int


def collate(trajectories: list[Trajectory], pad_id: int, multiple: int = 16) -> RolloutBatch:
    lengths = [len(t.prompt_ids) + len(t.completion_ids) - 1 for t in trajectories]
    width = pad_length(max(lengths), multiple)
    n = len(trajectories)
    inputs = np.full((n, width), pad_id, np.int32)
    targets = np.full((n, width), pad_id, np.int32)
    mask = np.zeros((n, width), np.float32)
    behavior = np.zeros((n, width), np.float32)
    for i, t in enumerate(trajectories):
        sequence = np.concatenate([t.prompt_ids, t.completion_ids])
        inputs[i, : len(sequence) - 1] = sequence[:-1]
        targets[i, : len(sequence) - 1] = sequence[1:]
        start = len(t.prompt_ids) - 1  # target index of the first completion token
        end = start + len(t.completion_ids)
        mask[i, start:end] = t.loss_mask
        behavior[i, start:end] = t.behavior_logprobs
    rewards = np.array([t.reward for t in trajectories], np.float32)
    return RolloutBatch(mx.array(inputs), mx.array(targets), mx.array(mask), mx.array(behavior),
                        mx.array(rewards), int(mask.sum()))


class RLTrainer(Trainer):
    name = "grpo"

    def __init__(self, cfg: Config, model: nn.Module, tokenizer, prompts: list[PromptRecord],
                 reward_functions: list[RewardFunction], eval_prompts: list[PromptRecord] | None = None,
                 reference: nn.Module | None = None):
        rl = cfg.rl
        super().__init__(cfg, model, tokenizer, optimizer_steps=cfg.training.max_steps * rl.num_iterations)
        if not prompts:
            raise ValueError("data.train: the RL prompt set is empty")
        if rl.beta > 0 and reference is None and not has_lora(model):
            raise ValueError("rl.beta > 0 with full fine-tuning needs a reference model (or enable LoRA)")
        self.name = cfg.algorithm
        self.prompts = prompts
        self.eval_prompts = eval_prompts or []
        self.reward_functions = reward_functions
        self.reference = reference
        self.group_size = cfg.generation.num_generations
        self.temperature = cfg.generation.temperature or 1.0
        self.prompt_ids = [encode_prompt(r.prompt, tokenizer, use_chat_template=cfg.data.use_chat_template)
                           for r in prompts]
        self.engine = Engine(model, tokenizer, completion_batch_size=cfg.training.batch_size * self.group_size)
        self.iterator = BatchIterator(len(prompts), cfg.training.batch_size, seed=cfg.training.seed,
                                      shuffle=cfg.data.shuffle)
        self.reference_forward_passes = 0
        self.stepper = self.make_stepper(self.loss) if rl.beta == 0 else self.make_stepper(self.loss_with_kl)

    # --- the loop ---------------------------------------------------------------------------
    def train(self, resume=None) -> dict:
        state = self.open(resume)
        if "data" in state:
            self.iterator = BatchIterator.from_state(len(self.prompts), self.cfg.training.batch_size, state["data"])
        try:
            while self.step < self.cfg.training.max_steps:
                self.seed_step()
                t0 = time.perf_counter()
                trajectories = self.rollout(self.iterator.next_indices())
                t1 = time.perf_counter()
                metrics = self.learn(trajectories)
                t2 = time.perf_counter()
                self.step += 1
                metrics.update(rollout_metrics(trajectories, self.reward_functions))
                n_generated = sum(t.num_completion_tokens for t in trajectories)
                metrics.update(generation_s=t1 - t0, update_s=t2 - t1, step_s=t2 - t0,
                               generation_tokens_per_s=n_generated / max(t1 - t0, 1e-9),
                               tokens_per_s=n_generated / max(t2 - t0, 1e-9))
                if self.cfg.training.eval_every and self.step % self.cfg.training.eval_every == 0:
                    metrics.update(self.evaluate())
                self.log(metrics)
                self.checkpoint({"data": self.iterator.state()})
            return self.finish({"data": self.iterator.state()})
        finally:
            self.close()

    # --- sample and score -------------------------------------------------------------------
    def sampling_params(self) -> SamplingParams:
        g = self.cfg.generation
        return SamplingParams(temperature=self.temperature, top_k=g.top_k, top_p=g.top_p, min_p=g.min_p,
                              max_tokens=g.max_new_tokens, stop=list(g.stop),
                              seed=self.cfg.training.seed * 1_000_003 + self.step)

    def rollout(self, indices: list[int]) -> list[Trajectory]:
        """`group_size` completions for each prompt, scored, as trajectories tagged with this step."""
        g = self.cfg.generation
        records = [self.prompts[i] for i in indices]
        task = RolloutTask(task_id=f"step-{self.step}", prompts=[self.prompt_ids[i] for i in indices],
                           rows=[{"prompt": r.prompt, **r.columns} for r in records],
                           group_ids=[f"{self.step}:{k}" for k in range(len(indices))], group_size=self.group_size,
                           sampling=SamplingSettings(self.temperature, g.top_p, g.top_k, g.min_p),
                           max_tokens=g.max_new_tokens, policy_version=self.step,
                           seed=self.cfg.training.seed * 1_000_003 + self.step,
                           env=self.cfg.env.model_dump() if self.cfg.env.name else {})
        return rollout(self.engine, task, self.reward_functions, policy_version=self.step, stop=list(g.stop))

    # --- learn ------------------------------------------------------------------------------
    def advantages(self, rewards: mx.array) -> mx.array:
        rl, g = self.cfg.rl, self.group_size
        if rl.advantage == "grpo":
            return group_normalized_advantages(rewards, g, scale_by_std=rl.scale_rewards)
        if rl.advantage == "rloo":
            return rloo_advantages(rewards, g)
        if rl.advantage == "reinforce_pp_baseline":
            return reinforce_pp_advantages(rewards, g)
        return reinforce_pp_advantages(rewards, None)

    def learn(self, trajectories: list[Trajectory]) -> dict:
        """`num_iterations` optimizer steps on one batch of trajectories (grouped contiguously)."""
        rl = self.cfg.rl
        batch = collate(trajectories, self.pad_id)
        advantages = self.advantages(batch.rewards)
        if rl.beta == 0 and not mx.any(advantages != 0).item():
            # No completion is better than another (every group scored alike): the gradient is exactly 0,
            # and an Adam step would still move the weights along its momentum. Skip the update.
            return {"loss": 0.0, "skipped_update": 1.0, "advantage_mean": 0.0, "advantage_std": 0.0,
                    "advantage_abs_max": 0.0, "reference_forward_passes": self.reference_forward_passes}
        reference = self.reference_logprobs(batch) if rl.beta > 0 else None
        n = batch.inputs.shape[0]
        size = rl.mini_batch_size or n
        chunks = [np.arange(i, min(i + size, n)) for i in range(0, n, size)]
        tokens_per_row = np.array(batch.mask.sum(axis=-1))
        history = []
        for _ in range(rl.num_iterations):
            for idx in chunks:
                rows = mx.array(idx)
                if rl.loss_type in ("bnpo", "dapo"):
                    weight = float(tokens_per_row[idx].sum() / max(tokens_per_row.sum(), 1))
                else:
                    weight = len(idx) / n
                args = [batch.inputs[rows], batch.targets[rows], batch.mask[rows], batch.behavior_logprobs[rows],
                        advantages[rows]]
                if reference is not None:
                    args.append(reference[rows])
                loss, metrics = self.stepper.accumulate(*args, weight=weight)
                history.append({"loss": loss.item(), **{k: v.item() for k, v in metrics.items()}})
            grad_norm = self.stepper.apply()
        summary = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
        summary.update(grad_norm=grad_norm, learning_rate=float(self.optimizer.learning_rate),
                       advantage_mean=advantages.mean().item(), advantage_std=advantages.std().item(),
                       advantage_abs_max=mx.abs(advantages).max().item(), skipped_update=0.0,
                       reference_forward_passes=self.reference_forward_passes)
        return summary

    def policy_logprobs(self, model, inputs, targets):
        logits = model(inputs)
        return logits, token_logprobs(logits, targets, self.temperature)

    def loss(self, model, inputs, targets, mask, behavior_logprobs, advantages, ref_logprobs=None):
        rl = self.cfg.rl
        logits, logprobs = self.policy_logprobs(model, inputs, targets)
        loss, metrics = policy_gradient_loss(
            logprobs, behavior_logprobs, advantages, mask, epsilon_low=rl.epsilon_low, epsilon_high=rl.epsilon_high,
            loss_type=rl.loss_type, importance_sampling_level=rl.importance_sampling_level,
            max_completion_length=self.cfg.generation.max_new_tokens, ref_logprobs=ref_logprobs, beta=rl.beta,
            kl_estimator=rl.kl_estimator)
        metrics["entropy"] = masked_mean(mx.stop_gradient(token_entropy(logits, self.temperature)), mask)
        return loss, metrics

    def loss_with_kl(self, model, inputs, targets, mask, behavior_logprobs, advantages, ref_logprobs):
        return self.loss(model, inputs, targets, mask, behavior_logprobs, advantages, ref_logprobs)

    def reference_logprobs(self, batch: RolloutBatch) -> mx.array:
        """Per-token logprobs under the reference: the base with adapters off (LoRA), else a frozen copy."""
        self.reference_forward_passes += 1
        if self.reference is not None:
            _, logprobs = self.policy_logprobs(self.reference, batch.inputs, batch.targets)
        else:
            with adapters_disabled(self.model):
                _, logprobs = self.policy_logprobs(self.model, batch.inputs, batch.targets)
        logprobs = mx.stop_gradient(logprobs)
        mx.eval(logprobs)
        return logprobs

    def evaluate(self) -> dict:
        if not self.eval_prompts:
            return {}
        e = self.cfg.eval
        reward = next((rf for rf in self.reward_functions if rf.name == e.reward), None)
        if reward is None:
            return {}
        result = evaluate(self.engine, self.tokenizer, self.eval_prompts[: e.num_prompts], reward.fn,
                          max_new_tokens=e.max_new_tokens or self.cfg.generation.max_new_tokens,
                          temperature=e.temperature, use_chat_template=self.cfg.data.use_chat_template)
        return {f"eval_{e.reward}": result["mean_reward"]}


def rollout_metrics(trajectories: list[Trajectory], reward_functions: list[RewardFunction]) -> dict:
    rewards = np.array([t.reward for t in trajectories])
    lengths = np.array([t.num_completion_tokens for t in trajectories])
    metrics = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
               "completion_length_mean": float(lengths.mean()), "completion_length_max": int(lengths.max()),
               "finished_fraction": float(np.mean([t.finish_reason == "stop" for t in trajectories]))}
    for rf in reward_functions:
        values = np.array([t.reward_components.get(rf.name, math.nan) for t in trajectories])
        if np.all(np.isnan(values)):
            continue
        metrics[f"reward_{rf.name}_mean"] = float(np.nanmean(values))
        metrics[f"reward_{rf.name}_std"] = float(np.nanstd(values))
        if rf.name == "accuracy":
            metrics["accuracy"] = float(np.nanmean(values))
    groups: dict[str, list[float]] = {}
    for t in trajectories:
        groups.setdefault(t.group_id, []).append(t.reward)
    metrics["groups_with_zero_std"] = float(np.mean([np.std(v) == 0 for v in groups.values()]))
    return metrics
