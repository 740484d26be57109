"""Evaluation: greedy (or sampled) completions for held-out prompts, scored by one reward function."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from lazarus.data.records import PromptRecord
from lazarus.data.tokenize import encode_prompt
from lazarus.env.rewards import call_reward
from lazarus.inference.engine import Engine
from lazarus.inference.sampling import SamplingParams

#: Prompts generated per progress report (the engine batches up to 64 completions at once anyway).
PROGRESS_EVERY = 64


def evaluate(engine: Engine, tokenizer, records: list[PromptRecord], reward_fn, *, max_new_tokens: int = 64,
             temperature: float = 0.0, use_chat_template: bool = True, seed: int = 0,
             progress: Callable[[str], None] | None = None) -> dict:
    """Mean reward over `records` (accuracy when the reward is 0/1), plus the completions and rewards.

    With `progress`, a line "eval: done/total prompts, mean so far, elapsed" is reported after every
    `PROGRESS_EVERY` prompts, so a long evaluation on a slow machine shows it is moving.
    """
    if not records:
        raise ValueError("evaluation prompt set is empty")
    prompt_ids = [encode_prompt(r.prompt, tokenizer, use_chat_template=use_chat_template) for r in records]
    params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed)
    t0 = time.perf_counter()
    texts, values = [], []
    for start in range(0, len(records), PROGRESS_EVERY):
        part = records[start:start + PROGRESS_EVERY]
        completions = engine.generate(prompt_ids[start:start + PROGRESS_EVERY], 1, params)
        texts += [c.text for c in completions]
        values.append(call_reward(reward_fn, [r.prompt for r in part], [c.text for c in completions],
                                  [c.token_ids for c in completions], [r.columns for r in part]))
        if progress is not None:
            done = np.concatenate(values)
            progress(f"eval: {len(texts)}/{len(records)} prompts, mean reward {np.nanmean(done):.3f} so far, "
                     f"{time.perf_counter() - t0:.0f}s")
    values = np.concatenate(values)
    return {"mean_reward": float(np.nanmean(values)), "n": len(records), "completions": texts,
            "rewards": values.tolist()}
