"""SFT trainer: masked token cross-entropy over a tokenized dataset, with gradient accumulation."""

from __future__ import annotations

import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lazarus.algorithms.sft import sft_loss
from lazarus.config import Config
from lazarus.data.batching import BatchIterator
from lazarus.data.tokenize import TokenizedExample
from lazarus.training.base import Trainer, pad_length


def collate_sft(examples: list[TokenizedExample], pad_id: int) -> tuple[mx.array, mx.array, mx.array]:
    """(inputs, targets, mask) right-padded; the mask marks targets whose token is trained on."""
    width = pad_length(max(len(e.input_ids) for e in examples) - 1)
    inputs = np.full((len(examples), width), pad_id, np.int32)
    targets = np.full((len(examples), width), pad_id, np.int32)
    mask = np.zeros((len(examples), width), np.float32)
    for i, e in enumerate(examples):
        n = len(e.input_ids) - 1
        inputs[i, :n] = e.input_ids[:-1]
        targets[i, :n] = e.input_ids[1:]
        mask[i, :n] = e.loss_mask[1:]
    return mx.array(inputs), mx.array(targets), mx.array(mask)


class SFTTrainer(Trainer):
    name = "sft"

    def __init__(self, cfg: Config, model: nn.Module, tokenizer, train: list[TokenizedExample],
                 eval_examples: list[TokenizedExample] | None = None):
        super().__init__(cfg, model, tokenizer)
        if not train:
            raise ValueError("data.train: the SFT dataset is empty")
        self.train_examples = [e for e in train if sum(e.loss_mask[1:]) > 0]
        if not self.train_examples:
            raise ValueError("data.train: no example has a token to train on (check data.max_length)")
        self.eval_examples = eval_examples or []
        self.iterator = BatchIterator(len(self.train_examples), cfg.training.batch_size, seed=cfg.training.seed,
                                      shuffle=cfg.data.shuffle)
        self.stepper = self.make_stepper(self.loss)

    @staticmethod
    def loss(model, inputs, targets, mask):
        loss, num_tokens = sft_loss(model(inputs), targets, mask)
        return loss, {"num_tokens": num_tokens}

    def train(self, resume=None) -> dict:
        state = self.open(resume)
        if "data" in state:
            self.iterator = BatchIterator.from_state(len(self.train_examples), self.cfg.training.batch_size,
                                                     state["data"])
        accum = self.cfg.training.grad_accum_steps
        try:
            while self.step < self.cfg.training.max_steps:
                self.seed_step()
                t0 = time.perf_counter()
                batch = [self.train_examples[i] for i in self.iterator.next_indices()]
                micro = [batch[i::accum] for i in range(accum) if batch[i::accum]]
                total_tokens = sum(sum(e.loss_mask[1:]) for e in batch)
                losses, tokens = [], 0
                for examples in micro:
                    n_tokens = sum(sum(e.loss_mask[1:]) for e in examples)
                    loss, _ = self.stepper.accumulate(*collate_sft(examples, self.pad_id),
                                                      weight=n_tokens / total_tokens)
                    losses.append(loss.item() * n_tokens / total_tokens)
                    tokens += sum(len(e.input_ids) for e in examples)
                grad_norm = self.stepper.apply()
                self.step += 1
                dt = time.perf_counter() - t0
                metrics = {"loss": float(sum(losses)), "grad_norm": grad_norm, "tokens_per_s": tokens / dt,
                           "step_s": dt, "learning_rate": float(self.optimizer.learning_rate)}
                if self.cfg.training.eval_every and self.step % self.cfg.training.eval_every == 0:
                    metrics.update(self.evaluate())
                self.log(metrics)
                self.checkpoint({"data": self.iterator.state()})
            return self.finish({"data": self.iterator.state()})
        finally:
            self.close()

    def evaluate(self) -> dict:
        """Held-out token-mean loss."""
        if not self.eval_examples:
            return {}
        total, count = 0.0, 0.0
        size = self.cfg.training.batch_size
        for i in range(0, len(self.eval_examples), size):
            inputs, targets, mask = collate_sft(self.eval_examples[i: i + size], self.pad_id)
            loss, n = sft_loss(self.model(inputs), targets, mask)
            total += loss.item() * n.item()
            count += n.item()
        return {"eval_loss": total / max(count, 1)}
