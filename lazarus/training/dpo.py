"""DPO trainer: sigmoid / IPO / hinge / robust DPO, APO, BCO, SimPO and ORPO on completion-token logprobs
(summed; IPO, SimPO and ORPO per token).

BCO's threshold is a running mean of the implicit reward over steps (TRL keeps one per forward pass; here
one per optimizer step, so micro-batches of one step share it); it is part of the checkpoint.

Reference logprobs come from the base model with adapters disabled when training LoRA (no second
copy of the weights), else from a frozen copy; they are computed once per batch, outside the
compiled gradient step. Prompt tokens never enter the sums.
"""

from __future__ import annotations

import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lazarus.algorithms.dpo import bco_pair_loss, dpo_loss, orpo_loss, simpo_loss
from lazarus.algorithms.logprobs import masked_mean, sequence_logprobs, token_logprobs
from lazarus.config import Config
from lazarus.data.batching import BatchIterator
from lazarus.data.tokenize import TokenizedPreference
from lazarus.models.lora import adapters_disabled, has_lora
from lazarus.training.base import Trainer, pad_length

REFERENCE_FREE = ("simpo", "orpo")


def collate_preferences(pairs: list[TokenizedPreference], pad_id: int):
    """Chosen rows first, then rejected rows: (inputs, targets, completion mask), right-padded."""
    sequences = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    width = pad_length(max(len(a) + len(b) for a, b in sequences) - 1)
    inputs = np.full((len(sequences), width), pad_id, np.int32)
    targets = np.full((len(sequences), width), pad_id, np.int32)
    mask = np.zeros((len(sequences), width), np.float32)
    for i, (prompt, completion) in enumerate(sequences):
        full = list(prompt) + list(completion)
        inputs[i, : len(full) - 1] = full[:-1]
        targets[i, : len(full) - 1] = full[1:]
        mask[i, len(prompt) - 1: len(full) - 1] = 1.0  # completion tokens only
    return mx.array(inputs), mx.array(targets), mx.array(mask)


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
        self.stepper = self.make_stepper(self.loss)

    def reference_logprobs(self, inputs, targets, mask) -> mx.array:
        if self.cfg.dpo.loss_type in REFERENCE_FREE:
            return mx.zeros((inputs.shape[0],))
        self.reference_forward_passes += 1
        if self.reference is not None:
            logps = sequence_logprobs(token_logprobs(self.reference(inputs), targets), mask)
        else:
            with adapters_disabled(self.model):
                logps = sequence_logprobs(token_logprobs(self.model(inputs), targets), mask)
        mx.eval(logps)
        return mx.stop_gradient(logps)

    def loss(self, model, inputs, targets, mask, ref_logps, bco_running):
        d = self.cfg.dpo
        per_token = token_logprobs(model(inputs), targets)
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
                    inputs, targets, mask = collate_preferences(pairs, self.pad_id)
                    ref = self.reference_logprobs(inputs, targets, mask)
                    running = mx.array([self.bco_running["mean"], self.bco_running["count"]], mx.float32)
                    loss, metrics = self.stepper.accumulate(inputs, targets, mask, ref, running,
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
            inputs, targets, mask = collate_preferences(self.eval_pairs[i: i + size], self.pad_id)
            ref = self.reference_logprobs(inputs, targets, mask)
            margin = sequence_logprobs(token_logprobs(self.model(inputs), targets), mask) - ref
            half = inputs.shape[0] // 2
            wins.extend((margin[:half] > margin[half:]).tolist())
        return {"eval_preference_accuracy": float(np.mean(wins))}
