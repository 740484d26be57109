"""Reward-model trainer: a Bradley–Terry reward model on the preference JSONL that DPO reads.

The reward model is the policy architecture with a value head (`PolicyWithValue`): the reward of a
prompt + completion is the head's value at the completion's last token (its EOS), where the model has
read everything it judges, as in InstructGPT's reward model. Each batch holds the chosen rows, then the
rejected rows (`rm.pooling` "mean" averages the values over the completion tokens instead); the loss
is `bradley_terry_loss` plus, with `rm.sft_coef`, the next-token loss on the
chosen completions through the LM head (which teaches a model trained from scratch what it judges).

`export_reward_model` writes RUN_DIR/reward_model: the backbone as a model directory plus
`value_head.safetensors`, the directory `rl.rewards: [{model: DIR}]` loads.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lazarus.algorithms.logprobs import masked_mean, token_logprobs
from lazarus.algorithms.reward_model import bradley_terry_loss
from lazarus.config import Config
from lazarus.data.batching import BatchIterator
from lazarus.data.tokenize import TokenizedPreference
from lazarus.models.io import write_json
from lazarus.models.value_head import (REWARD_MODEL_FILE, VALUE_HEAD_FILE, PolicyWithValue, collate_scored,
                                       last_token_values, save_value_head)
from lazarus.training.base import Trainer


def collate_pairs(pairs: list[TokenizedPreference], pad_id: int):
    """Chosen rows first, then rejected rows (see `collate_scored`)."""
    return collate_scored([(p.prompt_ids, p.chosen_ids) for p in pairs]
                          + [(p.prompt_ids, p.rejected_ids) for p in pairs], pad_id)


class RewardModelTrainer(Trainer):
    name = "rm"

    def __init__(self, cfg: Config, model: nn.Module, tokenizer, pairs: list[TokenizedPreference],
                 eval_pairs: list[TokenizedPreference] | None = None):
        mx.random.seed(cfg.training.seed)  # the head's init depends on the seed only
        reward_model = PolicyWithValue(model)
        super().__init__(cfg, reward_model, tokenizer)
        if not pairs:
            raise ValueError("data.train: the preference dataset is empty")
        self.pairs, self.eval_pairs = pairs, eval_pairs or []
        self.iterator = BatchIterator(len(pairs), cfg.training.batch_size, seed=cfg.training.seed,
                                      shuffle=cfg.data.shuffle)
        self.stepper = self.make_stepper(self.loss)

    def loss(self, reward_model, ids, last, mask):
        rewards, logits = last_token_values(reward_model, ids, last, mask, self.cfg.rm.pooling)
        half = ids.shape[0] // 2
        loss, metrics = bradley_terry_loss(rewards[:half], rewards[half:], center_coef=self.cfg.rm.center_rewards_coef)
        if self.cfg.rm.sft_coef:
            nll = -token_logprobs(logits[:half, :-1], ids[:half, 1:])
            chosen_nll = masked_mean(nll, mask[:half, :-1])
            loss = loss + self.cfg.rm.sft_coef * chosen_nll
            metrics["chosen_nll"] = chosen_nll
        return loss, metrics

    def train(self, resume=None) -> dict:
        state = self.open(resume)
        if "data" in state:
            self.iterator = BatchIterator.from_state(len(self.pairs), self.cfg.training.batch_size, state["data"])
        accum = self.cfg.training.grad_accum_steps
        try:
            while self.step < self.cfg.training.max_steps:
                self.seed_step()
                t0 = time.perf_counter()
                batch = [self.pairs[i] for i in self.iterator.next_indices()]
                micro = [batch[i::accum] for i in range(accum) if batch[i::accum]]
                history = []
                for pairs in micro:
                    loss, metrics = self.stepper.accumulate(*collate_pairs(pairs, self.pad_id),
                                                            weight=len(pairs) / len(batch))
                    history.append({"loss": loss.item(), **{k: v.item() for k, v in metrics.items()}})
                grad_norm = self.stepper.apply()
                self.step += 1
                metrics = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
                metrics.update(grad_norm=grad_norm, step_s=time.perf_counter() - t0,
                               learning_rate=float(self.optimizer.learning_rate))
                if self.cfg.training.eval_every and self.step % self.cfg.training.eval_every == 0:
                    metrics.update(self.evaluate())
                self.log(metrics)
                self.checkpoint({"data": self.iterator.state()})
            return self.finish({"data": self.iterator.state()})
        finally:
            self.close()

    def evaluate(self) -> dict:
        """Held-out pairwise accuracy: the fraction of pairs whose chosen completion scores higher (ties lose)."""
        if not self.eval_pairs:
            return {}
        wins, margins = [], []
        size = self.cfg.training.batch_size
        for i in range(0, len(self.eval_pairs), size):
            pairs = self.eval_pairs[i: i + size]
            ids, last, mask = collate_pairs(pairs, self.pad_id)
            rewards, _ = last_token_values(self.model, ids, last, mask, self.cfg.rm.pooling)
            chosen, rejected = np.array(rewards[: len(pairs)]), np.array(rewards[len(pairs):])
            wins.extend((chosen > rejected).tolist())
            margins.extend((chosen - rejected).tolist())
        return {"eval_pairwise_accuracy": float(np.mean(wins)), "eval_reward_margin": float(np.mean(margins))}


def export_reward_model(reward_model: PolicyWithValue, source_model_dir: Path, out: Path, save_model_dir,
                        pooling: str = "last") -> Path:
    """RUN_DIR/reward_model: the backbone (LoRA fused) as a model directory, the value head, and
    `reward_model.json` (how the head's values become one score: `pooling`).

    `save_model_dir(model, source, out)` is the launcher's model-directory writer (config and tokenizer
    files copied from `source`).
    """
    from lazarus.models.lora import fuse_lora, has_lora

    if has_lora(reward_model.policy):
        fuse_lora(reward_model.policy)
    save_model_dir(reward_model.policy, source_model_dir, out)
    save_value_head(reward_model.value_head, out / VALUE_HEAD_FILE)
    write_json(out / REWARD_MODEL_FILE, {"format": "lazarus.reward_model", "pooling": pooling})
    return out
