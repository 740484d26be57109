"""DPO trainer: sigmoid / IPO / hinge / robust DPO, APO, BCO, SimPO and ORPO on completion-token logprobs
(summed; IPO, SimPO and ORPO per token).

BCO's threshold is a running mean of the implicit reward over steps (TRL keeps one per forward pass; here
one per optimizer step, so micro-batches of one step share it); it is part of the checkpoint.

Reference logprobs come from the base model with adapters disabled when training LoRA (no second
copy of the weights), else from a frozen copy; they are computed once per batch, outside the
compiled gradient step. Prompt tokens never enter the sums.

A pair's chosen and rejected completions continue one prompt, and the prompt runs once for both
(`models.forward.SharedPrefix`, as the RL learner shares a group's prompt) on models whose layers all use
plain KV caches; the LM head runs over completion tokens only, a chunk at a time, so no [B, T, V] logits
exist (`policy_token_logprobs`). A family whose LM head `logits_from_hidden` does not know runs whole rows
through its own forward.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lazarus.algorithms.dpo import bco_pair_loss, dpo_loss, orpo_loss, simpo_loss
from lazarus.algorithms.logprobs import masked_mean, sequence_logprobs, token_logprobs
from lazarus.config import Config
from lazarus.data.batching import BatchIterator
from lazarus.data.tokenize import TokenizedPreference
from lazarus.models.forward import SharedPrefix, policy_token_logprobs, shares_prefix
from lazarus.models.lora import adapters_disabled, has_lora
from lazarus.models.value_head import head_is_known
from lazarus.training.base import Trainer, pad_length

REFERENCE_FREE = ("simpo", "orpo")


class PreferenceBatch(NamedTuple):
    """Pairs as rows, chosen rows first, then rejected rows: `mask` marks completion tokens of `targets`,
    which are the last columns of `inputs`; with `prefix`, each row continues its pair's prompt."""

    inputs: mx.array
    targets: mx.array
    mask: mx.array
    prefix: SharedPrefix | None = None


def collate_preferences(pairs: list[TokenizedPreference], pad_id: int, share_prompts: bool = False) -> PreferenceBatch:
    """Chosen rows first, then rejected rows, right-padded.

    Whole rows: each row holds its prompt and its completion; the targets start at the first completion
    column of the batch, rounded down to 16 (the LM head skips the prompt's other columns).
    With `share_prompts` (and a prompt longer than one token): each pair's prompt but its last token once
    (`SharedPrefix`, left-padded to a multiple of 16), and each row its last prompt token and its completion.
    """
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    prefix, start = None, min(len(p) for p in prompts) - 1
    if share_prompts and max(len(p) for p in prompts) > 1:
        length = pad_length(max(len(p) for p in prompts) - 1)
        tokens = np.full((len(pairs), length), pad_id, np.int32)
        for g, pair in enumerate(pairs):
            tokens[g, length - len(pair.prompt_ids) + 1:] = pair.prompt_ids[:-1]
        prefix = SharedPrefix(mx.array(tokens), mx.array([length - len(p.prompt_ids) + 1 for p in pairs]),
                              mx.array(list(range(len(pairs))) * 2))
        prompts, start = [p[-1:] for p in prompts], 0
    width = pad_length(max(len(a) + len(b) for a, b in zip(prompts, completions)) - 1)
    inputs = np.full((len(prompts), width), pad_id, np.int32)
    targets = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.float32)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        full = list(prompt) + list(completion)
        inputs[i, : len(full) - 1] = full[:-1]
        targets[i, : len(full) - 1] = full[1:]
        mask[i, len(prompt) - 1: len(full) - 1] = 1.0  # completion tokens only
    start = start // 16 * 16
    return PreferenceBatch(mx.array(inputs), mx.array(targets[:, start:]), mx.array(mask[:, start:]), prefix)


def completion_logprobs(model: nn.Module, batch: PreferenceBatch) -> mx.array:
    """Per-token logprobs [2P, S] of `batch.targets` under `model` (masked sums give each completion's)."""
    if batch.prefix is None and not head_is_known(model):  # its own forward: the full logits of the columns
        return token_logprobs(model(batch.inputs)[:, batch.inputs.shape[1] - batch.targets.shape[1]:], batch.targets)
    logprobs, _ = policy_token_logprobs(model, batch.inputs, batch.targets, prefix=batch.prefix)
    return logprobs


class DPOTrainer(Trainer):
    name = "dpo"

    def __init__(self, cfg: Config, model: nn.Module, tokenizer, pairs: list[TokenizedPreference],
                 eval_pairs: list[TokenizedPreference] | None = None, reference: nn.Module | None = None):
        super().__init__(cfg, model, tokenizer)
        if not pairs:
            raise ValueError("data.train: the preference dataset is empty")
        if cfg.dpo.loss_type not in REFERENCE_FREE and reference is None and not has_lora(model):
            raise ValueError("DPO with full fine-tuning needs a reference model (or enable LoRA)")
        self.pairs, self.eval_pairs, self.reference = pairs, eval_pairs or [], reference
        self.iterator = BatchIterator(len(pairs), cfg.training.batch_size, seed=cfg.training.seed,
                                      shuffle=cfg.data.shuffle)
        self.reference_forward_passes = 0
        self.bco_running = {"mean": 0.0, "count": 0}  # bco_pair: mean batch reward over the steps so far
        # chosen and rejected run their prompt once (through `policy_token_logprobs`, which needs a known head)
        self.share_prompts = head_is_known(model) and shares_prefix(model)
        self.stepper = self.make_stepper(self.loss)

    def collate(self, pairs: list[TokenizedPreference]) -> PreferenceBatch:
        return collate_preferences(pairs, self.pad_id, self.share_prompts)

    def reference_logprobs(self, batch: PreferenceBatch) -> mx.array:
        if self.cfg.dpo.loss_type in REFERENCE_FREE:
            return mx.zeros((batch.inputs.shape[0],))
        self.reference_forward_passes += 1
        if self.reference is not None:
            logps = sequence_logprobs(completion_logprobs(self.reference, batch), batch.mask)
        else:
            with adapters_disabled(self.model):
                logps = sequence_logprobs(completion_logprobs(self.model, batch), batch.mask)
        mx.eval(logps)
        return mx.stop_gradient(logps)

    def loss(self, model, inputs, targets, mask, ref_logps, bco_running, prefix: SharedPrefix | None = None):
        d = self.cfg.dpo
        per_token = completion_logprobs(model, PreferenceBatch(inputs, targets, mask, prefix))
        logps = sequence_logprobs(per_token, mask)
        lengths = mx.maximum(mask.sum(axis=-1), 1.0)
        half = inputs.shape[0] // 2
        chosen, rejected = logps[:half], logps[half:]
        if d.loss_type == "simpo":
            loss, metrics = simpo_loss(chosen / lengths[:half], rejected / lengths[half:], beta=d.beta,
                                       gamma=d.simpo_gamma)
        elif d.loss_type == "orpo":
            chosen_avg = chosen / lengths[:half]
            loss, metrics = orpo_loss(chosen_avg, rejected / lengths[half:], -chosen_avg, lam=d.orpo_lambda)
        elif d.loss_type == "bco_pair":
            loss, metrics = bco_pair_loss(chosen, rejected, ref_logps[:half], ref_logps[half:], bco_running,
                                          beta=d.beta)
        else:
            loss, metrics = dpo_loss(chosen, rejected, ref_logps[:half], ref_logps[half:], beta=d.beta,
                                     loss_type=d.loss_type, label_smoothing=d.label_smoothing,
                                     chosen_lengths=lengths[:half], rejected_lengths=lengths[half:])
        metrics["chosen_nll"] = masked_mean(-per_token[:half], mask[:half])
        return loss, metrics

    def train(self, resume=None) -> dict:
        state = self.open(resume)
        if "data" in state:
            self.iterator = BatchIterator.from_state(len(self.pairs), self.cfg.training.batch_size, state["data"])
        self.bco_running = dict(state.get("bco_running", self.bco_running))
        accum = self.cfg.training.grad_accum_steps
        try:
            while self.step < self.cfg.training.max_steps:
                self.seed_step()
                t0 = time.perf_counter()
                batch = [self.pairs[i] for i in self.iterator.next_indices()]
                micro = [batch[i::accum] for i in range(accum) if batch[i::accum]]
                history = []
                for pairs in micro:
                    collated = self.collate(pairs)
                    ref = self.reference_logprobs(collated)
                    running = mx.array([self.bco_running["mean"], self.bco_running["count"]], mx.float32)
                    loss, metrics = self.stepper.accumulate(*collated[:3], ref, running, collated.prefix,
                                                            weight=len(pairs) / len(batch))
                    history.append({"loss": loss.item(), **{k: v.item() for k, v in metrics.items()}})
                grad_norm = self.stepper.apply()
                self.step += 1
                dt = time.perf_counter() - t0
                metrics = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
                if "bco_batch_reward" in metrics:  # the step's mean reward joins the running mean
                    n = self.bco_running["count"] + 1
                    self.bco_running = {"mean": self.bco_running["mean"] + (metrics["bco_batch_reward"]
                                                                            - self.bco_running["mean"]) / n,
                                        "count": n}
                metrics.update(grad_norm=grad_norm, step_s=dt, learning_rate=float(self.optimizer.learning_rate),
                               reference_forward_passes=self.reference_forward_passes)
                self.log(metrics)
                self.checkpoint(self.state())
            return self.finish(self.state())
        finally:
            self.close()

    def state(self) -> dict:
        return {"data": self.iterator.state(), "bco_running": dict(self.bco_running)}

    def evaluate(self) -> dict:
        """Held-out preference accuracy: the policy's implicit reward ranks chosen above rejected."""
        if not self.eval_pairs:
            return {}
        wins = []
        size = self.cfg.training.batch_size
        for i in range(0, len(self.eval_pairs), size):
            collated = self.collate(self.eval_pairs[i: i + size])
            ref = self.reference_logprobs(collated)
            margin = sequence_logprobs(completion_logprobs(self.model, collated), collated.mask) - ref
            half = collated.inputs.shape[0] // 2
            wins.extend((margin[:half] > margin[half:]).tolist())
        return {"eval_preference_accuracy": float(np.mean(wins))}
