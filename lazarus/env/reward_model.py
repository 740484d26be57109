"""Rewards from a trained reward model, and the resolver of `rl.rewards` entries.

`RewardModelScorer(DIR)` loads what `lazarus train rm` exports (RUN_DIR/reward_model: a model
directory plus `value_head.safetensors`) and is a reward function of TRL's signature: it tokenizes each
prompt + completion exactly as the reward model's training pairs were (`encode_preference`), scores
them `batch_size` at a time (one forward pass per batch, right-padded, pooled as the model was trained:
`reward_model.json`), and returns one float per completion.

`resolve_reward_specs(specs)` turns the `rl.rewards` entries (`function` or `model`, `weight`,
optional `task`) into `RewardFunction`s; an entry with `task` scores only the rows of that task (the
`task` column) and gives None, not counted, elsewhere. Errors name `rl.rewards.<i>`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import mlx.core as mx
import numpy as np

from lazarus.data.records import PreferenceRecord
from lazarus.data.tokenize import encode_preference
from lazarus.env.rewards import RewardFunction, completion_text, resolve_reward_function, reward_name
from lazarus.errors import LazarusError
from lazarus.models.value_head import (REWARD_MODEL_FILE, REWARD_POOLINGS, VALUE_HEAD_FILE, collate_scored,
                                       last_token_values)


class RewardSpecError(LazarusError, ValueError):
    """An `rl.rewards` entry that cannot be used; the message names `rl.rewards.<i>`."""


class RewardModelScorer:
    """A TRL-signature reward function backed by a Bradley-Terry reward model directory."""

    def __init__(self, directory: str | Path, batch_size: int = 32, use_chat_template: bool = True,
                 max_length: int | None = None):
        from lazarus.models.load import load
        from lazarus.models.value_head import PolicyWithValue, load_value_head

        directory = Path(directory)
        head_file = directory / VALUE_HEAD_FILE
        if not head_file.is_file():
            raise RewardSpecError(f"reward model {directory}: no {VALUE_HEAD_FILE} (is it a `lazarus train rm` "
                                  f"output, RUN_DIR/reward_model?)")
        if batch_size < 1:
            raise RewardSpecError(f"reward model {directory}: batch_size must be >= 1, got {batch_size}")
        self.pooling = _read_pooling(directory)
        policy, self.tokenizer = load(directory)
        self.model = PolicyWithValue(policy, load_value_head(head_file))
        self.model.freeze()
        self.model.eval()
        self.directory, self.batch_size = directory, batch_size
        self.use_chat_template, self.max_length = use_chat_template, max_length
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.forward_passes = 0
        self._lock = threading.Lock()  # env workers may call from several threads; one model, one at a time
        self.__name__ = f"reward_model:{directory}"

    def sequences(self, prompts: list, completions: list) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, completion ids) of each row, tokenized as the reward model's training pairs."""
        out = []
        for prompt, completion in zip(prompts, completions):
            text = completion_text(completion)
            encoded = encode_preference(PreferenceRecord(prompt, text, text), self.tokenizer,
                                        max_length=self.max_length, use_chat_template=self.use_chat_template)
            out.append((encoded.prompt_ids, encoded.chosen_ids))
        return out

    def __call__(self, prompts, completions, **columns) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        sequences = self.sequences(prompts, completions)
        scores: list[float] = []
        with self._lock:
            for start in range(0, len(sequences), self.batch_size):
                ids, last, mask = collate_scored(sequences[start: start + self.batch_size], self.pad_id)
                rewards, _ = last_token_values(self.model, ids, last, mask, self.pooling)
                mx.eval(rewards)
                self.forward_passes += 1
                scores.extend(np.array(rewards, np.float64).tolist())
        return scores


def _read_pooling(directory: Path) -> str:
    import json

    path = directory / REWARD_MODEL_FILE
    if not path.is_file():
        return "last"
    try:
        pooling = json.loads(path.read_text()).get("pooling", "last")
    except (ValueError, AttributeError) as e:
        raise RewardSpecError(f"{path}: not a reward-model description ({e})") from None
    if pooling not in REWARD_POOLINGS:
        raise RewardSpecError(f"{path}: pooling {pooling!r} is not one of {REWARD_POOLINGS}")
    return pooling


def for_task(fn, task: str):
    """`fn` applied only to the rows whose `task` column is `task`; None (not counted) for the others."""

    def scored_for_task(prompts, completions, **columns):
        tasks = columns.get("task")
        if tasks is None:
            raise ValueError(f"a reward for task {task!r} needs a `task` column in the prompt rows (data.tasks)")
        rows = [i for i, t in enumerate(tasks) if t == task]
        values: list[float | None] = [None] * len(completions)
        if rows:
            subset = {k: [v[i] for i in rows] if isinstance(v, list) and len(v) == len(completions) else v
                      for k, v in columns.items()}
            for i, value in zip(rows, fn([prompts[i] for i in rows], [completions[i] for i in rows], **subset)):
                values[i] = value
        return values

    scored_for_task.__name__ = f"{getattr(fn, '__name__', 'reward')}@{task}"
    return scored_for_task


def resolve_reward_specs(specs, use_chat_template: bool = True) -> list[RewardFunction]:
    """`rl.rewards` entries -> RewardFunctions (reward models loaded once each); errors name the entry."""
    functions = []
    for i, spec in enumerate(specs):
        if spec.model is not None:
            try:
                fn = RewardModelScorer(spec.model, batch_size=spec.batch_size, use_chat_template=use_chat_template)
            except LazarusError as e:
                raise RewardSpecError(f"rl.rewards.{i}.model: {e}") from None
            name = f"reward_model_{i}" if len(specs) > 1 else "reward_model"
        else:
            try:
                fn = resolve_reward_function(spec.function)
            except ValueError as e:
                raise RewardSpecError(f"rl.rewards.{i}.function: {e}") from None
            name = reward_name(spec.function)
        if spec.task is not None:
            fn, name = for_task(fn, spec.task), f"{name}/{spec.task}"
        functions.append(RewardFunction(name, fn, spec.weight))
    return functions
