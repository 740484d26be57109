"""The RL learner: GRPO, RLOO, REINFORCE++ (and PPO, see ppo.py) on trajectories from any rollout actor.

`RLLearner.learn(trajectories)` is one update and reads like the algorithm in the papers:

    group       whole groups by `group_id` (a short or mixed group is an error naming it)
    KL reward   with rl.kl_placement "reward" (or TRL's RLOO), r <- r - beta * sum_t KL_t
    advantages  by group id: group-normalized (GRPO; scale_rewards group|batch|none), leave-one-out
                (RLOO) or token-level batch-whitened (REINFORCE++, as verl/OpenRLHF)
    proximal    for stale trajectories, the learner's own logprobs before this batch (decoupled PPO)
    update      `num_iterations` passes; each pass takes one optimizer step per mini-batch of
                `rl.mini_batch_size` prompts (all of them when null), accumulating micro-batches of
                `rl.micro_batch_size` completions (or `training.grad_accum_steps` pieces)
    version     policy_version += 1

The learner owns the optimizer, the stepper, the reference and `policy_version` (= its step). It never
generates: the coordinator (runtime/coordinator.py) hands it trajectories that rollout actors sampled,
in this process or elsewhere, and publishes the weights it returns.
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lazarus.algorithms.advantages import group_advantages, reinforce_pp_token_advantages, rloo_group_advantages
from lazarus.algorithms.kl import kl_shaped_sequence_rewards
from lazarus.algorithms.logprobs import masked_mean
from lazarus.algorithms.policy_gradient import policy_gradient_loss
from lazarus.algorithms.rloo import rloo_sequence_loss
from lazarus.config import Config
from lazarus.data.curriculum import per_task_means
from lazarus.data.records import PromptRecord
from lazarus.data.trajectory import SamplingSettings, Trajectory
from lazarus.env.rewards import RewardFunction, resolve_reward_function, reward_name
from lazarus.errors import LazarusError
from lazarus.models.forward import SharedPrefix, policy_token_logprobs, shares_prefix
from lazarus.models.lora import adapters_disabled, has_lora
from lazarus.training.base import Trainer, pad_length
from lazarus.training.data_parallel import shard_rows
from lazarus.training.evaluate import evaluate


class TrajectoryBatchError(LazarusError, ValueError):
    """Trajectories the learner cannot learn from as given (names the group, actor or setting)."""


class RolloutBatch:
    """Trajectories collated into right-padded arrays for the learner (targets are inputs shifted by one)."""

    def __init__(self, inputs, targets, mask, behavior_logprobs, rewards, num_tokens, starts, lengths):
        self.inputs: mx.array = inputs  # [N, L] token ids
        self.targets: mx.array = targets  # [N, L]
        self.mask: mx.array = mask  # [N, L] 1 at model tokens the loss trains on
        self.behavior_logprobs: mx.array = behavior_logprobs  # [N, L]
        self.rewards: mx.array = rewards  # [N]
        self.num_tokens: int = num_tokens
        self.starts: np.ndarray = starts  # [N] each row's first completion column (its prompt length - 1)
        self.lengths: np.ndarray = lengths  # [N] each row's completion length


def collate(trajectories: list[Trajectory], pad_id: int, multiple: int = 16) -> RolloutBatch:
    lengths = [len(t.prompt_ids) + len(t.completion_ids) - 1 for t in trajectories]
    width = pad_length(max(lengths), multiple)
    n = len(trajectories)
    inputs = np.full((n, width), pad_id, np.int32)
    targets = np.full((n, width), pad_id, np.int32)
    mask = np.zeros((n, width), np.float32)
    behavior = np.zeros((n, width), np.float32)
    starts = np.array([len(t.prompt_ids) - 1 for t in trajectories])
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
                        mx.array(rewards), int(mask.sum()), starts,
                        np.array([len(t.completion_ids) for t in trajectories]))


class SuffixColumns:
    """Rows of a group-contiguous `RolloutBatch` as a `SharedPrefix` plus each row's own tokens.

    A row's suffix is its last prompt token and then its completion: collate's columns `starts[r]` onward,
    `width` of them (its completion length rounded up to 16, as collate rounds). `take` gathers any [n, L]
    per-token array of those rows into that [n, width] layout, where `valid` says which entries exist.
    """

    def __init__(self, batch: RolloutBatch, rows: np.ndarray, group_size: int, pad_id: int):
        groups, group_of_row = np.unique(rows // group_size, return_inverse=True)
        prompt_rows = rows[np.unique(group_of_row, return_index=True)[1]]  # one row of each group
        prompt_lengths = batch.starts[prompt_rows]  # the shared tokens: the prompt but its last
        length = pad_length(int(prompt_lengths.max()), 16)
        tokens = np.full((len(groups), length), pad_id, np.int32)
        inputs = np.array(batch.inputs[mx.array(prompt_rows), :length])  # only what the prefix needs
        for g, n in enumerate(prompt_lengths):
            tokens[g, length - n:] = inputs[g, :n]
        self.prefix = SharedPrefix(mx.array(tokens), mx.array(length - prompt_lengths), mx.array(group_of_row))
        self.width = pad_length(int(batch.lengths[rows].max()), 16)
        columns = batch.starts[rows, None] + np.arange(self.width)[None, :]
        self.valid = mx.array(columns < batch.inputs.shape[1])
        self.columns = mx.array(np.minimum(columns, batch.inputs.shape[1] - 1))
        self.rows = rows
        self._row_index = mx.array(rows)

    def take(self, values: mx.array) -> mx.array:
        """[n, width] of `values` [N, L] (a whole batch's; entries that do not exist are 0)."""
        taken = mx.take_along_axis(values[self._row_index], self.columns, axis=1)
        return mx.where(self.valid, taken, mx.zeros_like(taken))

    def put(self, values: mx.array, shape: tuple[int, int]) -> mx.array:
        """[N, L] holding `values` [n, width] at their rows' columns (the inverse of `take`), zeros elsewhere."""
        out = np.zeros(shape, np.float32)
        columns, valid = np.array(self.columns), np.array(self.valid)
        row_index = np.broadcast_to(self.rows[:, None], columns.shape)
        out[row_index[valid], columns[valid]] = np.array(values)[valid]
        return mx.array(out)


def group_trajectories(trajectories: list[Trajectory], group_size: int) -> list[Trajectory]:
    """Trajectories laid out group-contiguous by `group_id` (first-seen order); every group whole."""
    groups: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        groups.setdefault(t.group_id, []).append(t)
    for group_id, members in groups.items():
        if len(members) != group_size:
            actors = sorted({m.actor_id or "?" for m in members})
            raise TrajectoryBatchError(f"group {group_id} has {len(members)} trajectories (from actor "
                                       f"{', '.join(actors)}), expected generation.num_generations={group_size}")
        if len({(m.task_id, tuple(m.prompt_ids)) for m in members}) != 1:
            raise TrajectoryBatchError(f"group {group_id} mixes prompts or tasks: its advantages would compare "
                                       f"completions of different prompts")
    return [t for members in groups.values() for t in members]


#: the verl aggregation each legacy loss_type is (dr_grpo: token sum / (B x max length), handled as such)
LOSS_TYPE_AGGREGATION = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dapo": "token-mean",
                         "dr_grpo": None}


def update_plan(num_rows: int, group_size: int, mini_batch_prompts: int | None, micro_batch_rows: int | None,
                grad_accum_steps: int = 1) -> list[list[np.ndarray]]:
    """Row indices of each optimizer step (a mini-batch of whole groups), split into micro-batches.

    `mini_batch_prompts` groups per optimizer step (None: all, one step); each mini-batch is cut into
    micro-batches of `micro_batch_rows` rows, or else into `grad_accum_steps` near-equal pieces.
    """
    groups = max(num_rows // group_size, 1)
    per_step = (mini_batch_prompts or groups) * group_size
    return [micro_batches(np.arange(start, min(start + per_step, num_rows)), micro_batch_rows, grad_accum_steps)
            for start in range(0, num_rows, per_step)]


def micro_batches(rows: np.ndarray, micro_batch_rows: int | None, grad_accum_steps: int = 1) -> list[np.ndarray]:
    """`rows` cut into micro-batches of `micro_batch_rows`, or else into `grad_accum_steps` near-equal pieces."""
    if micro_batch_rows:
        return [rows[i: i + micro_batch_rows] for i in range(0, len(rows), micro_batch_rows)]
    return [piece for piece in np.array_split(rows, min(grad_accum_steps, max(len(rows), 1))) if len(piece)]


def optimizer_steps_per_update(cfg: Config) -> int:
    """Optimizer steps one `learn()` takes: passes x mini-batches (for the learning-rate schedule)."""
    mini = cfg.rl.mini_batch_size or cfg.training.batch_size
    return cfg.rl.num_iterations * -(-cfg.training.batch_size // mini)


def proximal_is_the_forward(cfg: Config) -> bool:
    """Whether decoupled PPO's proximal logprobs are the update's own forward pass, detached.

    The proximal policy is the learner's weights before this batch. When a `learn()` takes one optimizer
    step (one mini-batch, one pass) every micro-batch's forward runs at exactly those weights, so its
    logprobs (gradient stopped) are the proximal ones and the separate proximal forward pass is skipped:
    the off-policy update then costs what an on-policy one does (as AReaL does). Only in async mode, where
    batches are stale by design, and only without dropout, where a training forward equals an eval one.
    """
    rt = cfg.runtime
    return (rt.mode == "async" and rt.max_staleness > 0 and optimizer_steps_per_update(cfg) == 1
            and not (cfg.lora.enabled and cfg.lora.dropout > 0))


class RLLearner(Trainer):
    """Owns the optimizer, stepper, reference and `policy_version`; learns from trajectories."""

    name = "grpo"

    def __init__(self, cfg: Config, model: nn.Module, tokenizer, reference: nn.Module | None = None,
                 eval_prompts: list[PromptRecord] | None = None, reward_functions: list[RewardFunction] | None = None):
        rl = cfg.rl
        steps = cfg.training.max_steps * optimizer_steps_per_update(cfg)
        super().__init__(cfg, model, tokenizer, optimizer_steps=steps)
        if rl.beta > 0 and reference is None and not has_lora(model):
            raise TrajectoryBatchError("rl.beta > 0 with full fine-tuning needs a reference model (or enable LoRA)")
        if rl.micro_batch_size is not None and cfg.training.grad_accum_steps > 1:
            raise TrajectoryBatchError("give rl.micro_batch_size or training.grad_accum_steps, not both (each "
                                       "sets how a mini-batch is split for gradient accumulation)")
        self.trl_rloo = rl.advantage == "rloo" and rl.rloo_form == "trl"
        # KL in the reward (or TRL's RLOO, which always folds k1 into it): the loss then carries no KL term.
        self.kl_placement = rl.kl_placement or ("reward" if cfg.algorithm == "ppo" else "loss")
        self.kl_estimator = rl.kl_estimator or ("k1" if cfg.algorithm == "ppo" else "k3")
        self.kl_in_reward = rl.beta > 0 and (self.kl_placement == "reward" or self.trl_rloo)
        self.loss_beta = 0.0 if self.kl_in_reward else rl.beta
        self.loss_agg_mode = rl.loss_agg_mode or LOSS_TYPE_AGGREGATION[rl.loss_type]
        self.name = cfg.algorithm
        self.reference = reference
        self.eval_prompts = eval_prompts or []
        self.reward_functions = reward_functions or []
        self.group_size = cfg.generation.num_generations
        g = cfg.generation
        self.temperature = g.temperature or 1.0
        self.sampling = SamplingSettings(self.temperature, g.top_p, g.top_k, g.min_p)
        self.reference_forward_passes = 0
        self.proximal_forward_passes = 0
        self.proximal_from_forward = proximal_is_the_forward(cfg)
        # a group's completions share their prompt: the update runs it once per group (models/forward.py)
        self.share_prefix = self.group_size > 1 and shares_prefix(model)
        self._engine = None
        self.stepper = self.make_stepper(self.loss)
        # training.learners > 1 (training/data_parallel.py): this replica computes the gradient of part `shard` of
        # `shards` of every optimizer step's rows; the leader's `replicas` hands each step's batch to the others
        self.shard, self.replicas = (0, 1), None

    @property
    def policy_version(self) -> int:
        return self.step

    # --- learn ------------------------------------------------------------------------------
    def check(self, trajectories: list[Trajectory]) -> None:
        """Refuse trajectories whose sampling distribution this learner cannot correct for."""
        if not trajectories:
            raise TrajectoryBatchError("no trajectories to learn from")
        for t in trajectories:
            if t.sampling != self.sampling:
                raise TrajectoryBatchError(
                    f"trajectory of group {t.group_id} (actor {t.actor_id or '?'}) was sampled with {t.sampling}, "
                    f"this learner's ratio is computed for {self.sampling} (generation.* of the run)")
            if t.policy_version > self.policy_version:
                raise TrajectoryBatchError(f"trajectory of group {t.group_id} (actor {t.actor_id or '?'}) claims "
                                           f"policy version {t.policy_version}, newer than the learner's "
                                           f"{self.policy_version}")

    def advantages(self, rewards: mx.array, group_ids: list[str], mask: mx.array) -> mx.array:
        """[N] for GRPO/RLOO, [N,T] for REINFORCE++ (whitened over the batch's tokens); groups by id."""
        rl, g = self.cfg.rl, self.group_size
        if rl.advantage == "grpo":
            return group_advantages(rewards, group_ids, group_size=g, scale_rewards=rl.scale_rewards)
        if rl.advantage == "rloo":
            return rloo_group_advantages(rewards, group_ids, group_size=g)
        if rl.advantage == "reinforce_pp_baseline":
            return reinforce_pp_token_advantages(rewards, mask, group_ids=group_ids, group_size=g)
        return reinforce_pp_token_advantages(rewards, mask)

    def learn(self, trajectories: list[Trajectory]) -> dict:
        """One update (`num_iterations` optimizer passes) on whole groups; policy_version += 1."""
        self.check(trajectories)
        trajectories = group_trajectories(trajectories, self.group_size)
        if self.replicas is not None:
            self.shard = self.replicas.share(self.policy_version, trajectories)
        metrics = self._learn(trajectories)
        self.step += 1
        return metrics

    def _learn(self, trajectories: list[Trajectory]) -> dict:
        rl = self.cfg.rl
        batch = collate(trajectories, self.pad_id)
        lag = [self.policy_version - t.policy_version for t in trajectories]
        if self.trl_rloo and max(lag) > 0:
            raise TrajectoryBatchError("rl.rloo_form trl is on-policy only: it has no correction for trajectories "
                                       f"{max(lag)} versions old (set runtime.max_staleness: 0)")
        reference = self.reference_logprobs(batch) if rl.beta > 0 else None
        rewards = batch.rewards
        if self.kl_in_reward:
            estimator = "k1" if self.trl_rloo else self.kl_estimator
            rewards = kl_shaped_sequence_rewards(rewards, batch.behavior_logprobs, reference, batch.mask, rl.beta,
                                                 estimator)
        advantages = self.advantages(rewards, [t.group_id for t in trajectories], batch.mask)
        base = {"staleness_mean": float(np.mean(lag)), "staleness_max": float(np.max(lag)),
                "reference_forward_passes": self.reference_forward_passes,
                "proximal_forward_passes": self.proximal_forward_passes}
        if self.loss_beta == 0 and not mx.any(advantages != 0).item():
            # No completion is better than another (every group scored alike): the gradient is exactly 0,
            # and an Adam step would still move the weights along its momentum. Skip the update.
            return {"loss": 0.0, "skipped_update": 1.0, "advantage_mean": 0.0, "advantage_std": 0.0,
                    "advantage_abs_max": 0.0, **base}
        proximal = self.proximal_logprobs(batch) if max(lag) > 0 and not self.proximal_from_forward else None
        base.update(reference_forward_passes=self.reference_forward_passes,
                    proximal_forward_passes=self.proximal_forward_passes)
        plan = update_plan(batch.inputs.shape[0], self.group_size, rl.mini_batch_size, rl.micro_batch_size,
                           self.cfg.training.grad_accum_steps)
        tokens_per_row = np.array(batch.mask.sum(axis=-1))
        history, optimizer_steps = [], 0
        for _ in range(rl.num_iterations):
            for mini_batch in plan:
                rows_in_step = np.concatenate(mini_batch)
                if self.shard[1] > 1:  # data-parallel: this replica's part of the step, with the step's weights
                    mini_batch = micro_batches(shard_rows(rows_in_step, *self.shard), rl.micro_batch_size,
                                               self.cfg.training.grad_accum_steps)
                for idx in mini_batch:
                    args = self.micro_batch_args(batch, idx, advantages, reference, proximal)
                    weight = self.micro_batch_weight(tokens_per_row, idx, rows_in_step)
                    loss, metrics = self.stepper.accumulate(*args, weight=weight)
                    history.append({"loss": loss.item(), **{k: v.item() for k, v in metrics.items()}})
                grad_norm = self.stepper.apply()
                optimizer_steps += 1
        base["optimizer_steps"] = optimizer_steps
        summary = {k: float(np.mean([h[k] for h in history])) for k in history[0]} if history else {}
        if self.shard[1] > 1:
            base["learners"] = float(self.shard[1])
        summary.update(grad_norm=grad_norm, learning_rate=float(self.optimizer.learning_rate),
                       advantage_mean=advantages.mean().item(), advantage_std=advantages.std().item(),
                       advantage_abs_max=mx.abs(advantages).max().item(), skipped_update=0.0, **base)
        return summary

    def suffix_columns(self, batch: RolloutBatch, rows: np.ndarray) -> SuffixColumns | None:
        """Rows `rows` laid out to share their groups' prompts, or None where they run whole (no groups, a
        model whose caches cannot be shared, or prompts of one token, which leave nothing to share)."""
        if self.share_prefix and batch.starts[rows].max() > 0:
            return SuffixColumns(batch, rows, self.group_size, self.pad_id)
        return None

    def micro_batch_args(self, batch: RolloutBatch, idx: np.ndarray, advantages: mx.array,
                         reference: mx.array | None, proximal: mx.array | None) -> list:
        """The loss's arrays for rows `idx`, laid out by `micro_batch_columns`."""
        inputs, columns, prefix = self.micro_batch_columns(batch, idx)
        return [inputs, columns(batch.targets), columns(batch.mask), columns(batch.behavior_logprobs),
                advantages[mx.array(idx)] if advantages.ndim == 1 else columns(advantages),
                columns(reference) if reference is not None else None,
                columns(proximal) if proximal is not None else None, prefix]

    def micro_batch_columns(self, batch: RolloutBatch, idx: np.ndarray
                            ) -> tuple[mx.array, Callable[[mx.array], mx.array], SharedPrefix | None]:
        """Rows `idx` as a loss runs them: (inputs, a function cutting any [N, L] per-token array of the batch to
        the loss's columns of those rows, the shared prefix or None). With a shared prefix: each group's prompt
        once, and each row's suffix (see `SuffixColumns`). Otherwise whole rows, with the loss's columns from
        the first completion column (rounded down to 16, so a compiled step sees few shapes): the LM head
        skips the prompt's."""
        suffix = self.suffix_columns(batch, idx)
        if suffix is not None:
            return suffix.take(batch.inputs), suffix.take, suffix.prefix
        rows = mx.array(idx)
        start = int(batch.starts[idx].min()) // 16 * 16
        return batch.inputs[rows], lambda values: values[rows, start:], None

    def micro_batch_weight(self, tokens_per_row: np.ndarray, rows: np.ndarray, rows_in_step: np.ndarray) -> float:
        """A micro-batch's share of its optimizer step, so that accumulation equals one big batch."""
        if self.loss_agg_mode == "token-mean":
            return float(tokens_per_row[rows].sum() / max(tokens_per_row[rows_in_step].sum(), 1))
        if self.loss_agg_mode == "seq-mean-token-sum-norm":
            return 1.0  # a sum over tokens / a constant: micro-batch sums add up
        return len(rows) / len(rows_in_step)

    def policy_logprobs(self, model, inputs, targets, with_entropy: bool = False, prefix: SharedPrefix | None = None):
        """Selected-token logprobs (and entropy) in chunks over the sequence: never a full [B, L, V] tensor."""
        return policy_token_logprobs(model, inputs, targets, self.temperature, with_entropy=with_entropy,
                                     prefix=prefix)

    def loss(self, model, inputs, targets, mask, behavior_logprobs, advantages, ref_logprobs=None,
             proximal_logprobs=None, prefix: SharedPrefix | None = None):
        rl = self.cfg.rl
        logprobs, entropy = self.policy_logprobs(model, inputs, targets, with_entropy=True, prefix=prefix)
        if proximal_logprobs is None and self.proximal_from_forward:
            proximal_logprobs = logprobs  # the weights before this update are these ones (detached in the loss)
        if self.trl_rloo:
            loss, metrics = rloo_sequence_loss(logprobs, behavior_logprobs, advantages, mask, epsilon=rl.epsilon_low)
        else:
            loss, metrics = policy_gradient_loss(
                logprobs, behavior_logprobs, advantages, mask, epsilon_low=rl.epsilon_low,
                epsilon_high=rl.epsilon_high, loss_type=rl.loss_type,
                importance_sampling_level=rl.importance_sampling_level,
                max_completion_length=self.cfg.generation.max_new_tokens, ref_logprobs=ref_logprobs,
                beta=self.loss_beta, kl_estimator=self.kl_estimator, proximal_logprobs=proximal_logprobs,
                importance_cap=self.cfg.runtime.importance_cap, delta=rl.delta, clip_ratio_c=rl.clip_ratio_c,
                loss_agg_mode=rl.loss_agg_mode)
        metrics["entropy"] = masked_mean(mx.stop_gradient(entropy), mask)
        return loss, metrics

    def _frozen_logprobs(self, model, batch: RolloutBatch) -> mx.array:
        """[N, L] per-token logprobs of the whole batch, in collate's layout (through a shared prefix if any)."""
        suffix = self.suffix_columns(batch, np.arange(batch.inputs.shape[0]))
        if suffix is not None:
            logprobs, _ = self.policy_logprobs(model, suffix.take(batch.inputs), suffix.take(batch.targets),
                                               prefix=suffix.prefix)
            return suffix.put(mx.stop_gradient(logprobs), batch.targets.shape)
        logprobs, _ = self.policy_logprobs(model, batch.inputs, batch.targets)
        logprobs = mx.stop_gradient(logprobs)
        mx.eval(logprobs)
        return logprobs

    def reference_logprobs(self, batch: RolloutBatch) -> mx.array:
        """Per-token logprobs under the reference: the base with adapters off (LoRA), else a frozen copy."""
        self.reference_forward_passes += 1
        if self.reference is not None:
            return self._frozen_logprobs(self.reference, batch)
        with adapters_disabled(self.model):
            return self._frozen_logprobs(self.model, batch)

    def proximal_logprobs(self, batch: RolloutBatch) -> mx.array:
        """Decoupled PPO's proximal policy: this learner's weights before the update, in eval mode."""
        self.proximal_forward_passes += 1
        training = self.model.training
        self.model.eval()
        try:
            return self._frozen_logprobs(self.model, batch)
        finally:
            self.model.train(training)

    # --- evaluate ---------------------------------------------------------------------------
    def evaluate(self) -> dict:
        if not self.eval_prompts:
            return {}
        e = self.cfg.eval
        reward = next((rf for rf in self.reward_functions if rf.name == reward_name(e.reward)), None)
        if reward is None:  # not among rl.rewards: a built-in or module:function of its own
            reward = RewardFunction(reward_name(e.reward), resolve_reward_function(e.reward))
        if self._engine is None:
            from lazarus.inference.engine import Engine

            self._engine = Engine(self.model, self.tokenizer)
        training = self.model.training
        self.model.eval()
        prompts = self.eval_prompts[: e.num_prompts]
        try:
            result = evaluate(self._engine, self.tokenizer, prompts, reward.fn,
                              max_new_tokens=e.max_new_tokens or self.cfg.generation.max_new_tokens,
                              temperature=e.temperature, use_chat_template=self.cfg.data.use_chat_template)
        finally:
            self.model.train(training)
        metrics = {f"eval_{reward.name}": result["mean_reward"]}
        if self.cfg.data.tasks:  # multi-task: eval_<reward>/<task> too
            metrics.update(per_task_means(result["rewards"], [r.columns["task"] for r in prompts],
                                          f"eval_{reward.name}"))
        return metrics


def rollout_metrics(trajectories: list[Trajectory], reward_names: list[str]) -> dict:
    rewards = np.array([t.reward for t in trajectories])
    lengths = np.array([t.num_completion_tokens for t in trajectories])
    metrics = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
               "completion_length_mean": float(lengths.mean()), "completion_length_max": int(lengths.max()),
               "finished_fraction": float(np.mean([t.finish_reason == "stop" for t in trajectories]))}
    for name in reward_names:
        values = np.array([t.reward_components.get(name, math.nan) for t in trajectories])
        if np.all(np.isnan(values)):
            continue
        metrics[f"reward_{name}_mean"] = float(np.nanmean(values))
        metrics[f"reward_{name}_std"] = float(np.nanstd(values))
        if name == "accuracy":
            metrics["accuracy"] = float(np.nanmean(values))
    if any("tool_calls" in t.info for t in trajectories):  # multi-turn tool episodes
        metrics["tool_call_rate"] = float(np.mean([t.info.get("tool_calls", 0) > 0 for t in trajectories]))
        metrics["failed_tool_calls"] = float(np.sum([t.info.get("failed_calls", 0) for t in trajectories]))
        metrics["turns_mean"] = float(np.mean([t.info.get("turns", 1) for t in trajectories]))
    groups: dict[str, list[float]] = {}
    for t in trajectories:
        groups.setdefault(t.group_id, []).append(t.reward)
    metrics["groups_with_zero_std"] = float(np.mean([np.std(v) == 0 for v in groups.values()]))
    return metrics
