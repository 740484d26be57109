"""Evaluation: greedy (or sampled) completions for held-out prompts, scored by one reward function."""

from __future__ import annotations

import numpy as np

from lazarus.data.records import PromptRecord
from lazarus.data.tokenize import encode_prompt
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
    conversational = isinstance(records[0].prompt, list)
    shown = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    keys = set().union(*(r.columns.keys() for r in records))
    kwargs = {k: [r.columns.get(k) for r in records] for k in keys}
    rewards = reward_fn(prompts=[r.prompt for r in records], completions=shown,
                        completion_ids=[c.token_ids for c in completions], **kwargs)
    values = np.array([np.nan if v is None else float(v) for v in rewards])
    return {"mean_reward": float(np.nanmean(values)), "n": len(records), "completions": texts,
            "rewards": values.tolist()}
