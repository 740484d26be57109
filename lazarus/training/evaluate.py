"""Evaluation: greedy (or sampled) completions for held-out prompts, scored by one reward function."""

from __future__ import annotations

import numpy as np

from lazarus.data.records import PromptRecord
from lazarus.data.tokenize import encode_prompt
from lazarus.env.rewards import call_reward
from lazarus.inference.engine import Engine
from lazarus.inference.sampling import SamplingParams


def evaluate(engine: Engine, tokenizer, records: list[PromptRecord], reward_fn, *, max_new_tokens: int = 64,
             temperature: float = 0.0, use_chat_template: bool = True, seed: int = 0) -> dict:
    """Mean reward over `records` (accuracy when the reward is 0/1), plus the completions."""
    if not records:
        raise ValueError("evaluation prompt set is empty")
    prompt_ids = [encode_prompt(r.prompt, tokenizer, use_chat_template=use_chat_template) for r in records]
    params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed)
    completions = engine.generate(prompt_ids, 1, params)
    texts = [c.text for c in completions]
    values = call_reward(reward_fn, [r.prompt for r in records], texts, [c.token_ids for c in completions],
                         [r.columns for r in records])
    return {"mean_reward": float(np.nanmean(values)), "n": len(records), "completions": texts,
            "rewards": values.tolist()}
