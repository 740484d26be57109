"""Sampling parameters and the sampler the engine hands to mlx-lm's batch generator.

The engine scales logits by 1/temperature *before* mlx-lm normalizes them, so the logprobs it returns
are log-softmax(logits / T): the distribution the learner recomputes (ratio 1 when on-policy). Top-k,
top-p and min-p then only truncate which tokens may be drawn (mlx-lm's own filters). Sampling draws
from an explicit PRNG key chain, so the same seed gives the same tokens without touching MLX's global
random state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy (logprobs are then those of the unscaled model)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    max_tokens: int = 64
    stop: list[str] = field(default_factory=list)  # stop strings; the text is cut before them
    stop_token_ids: list[int] = field(default_factory=list)  # besides the tokenizer's EOS ids
    seed: Optional[int] = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_sampler(params: SamplingParams) -> Callable[[mx.array], mx.array]:
    """A sampler over normalized logprobs [B, V] -> token ids [B] with its own key chain."""
    if params.greedy:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    filters = []
    if 0 < params.top_p < 1:
        filters.append(lambda x: apply_top_p(x, params.top_p))
    if params.min_p > 0:
        filters.append(lambda x: apply_min_p(x, params.min_p))
    if params.top_k > 0:
        filters.append(lambda x: apply_top_k(x, params.top_k))
    key = [mx.random.key(params.seed if params.seed is not None else _fresh_seed())]

    def sampler(logprobs: mx.array) -> mx.array:
        for f in filters:
            logprobs = f(logprobs)
        key[0], sub = mx.random.split(key[0])
        return mx.random.categorical(logprobs, key=sub)

    return sampler


def _fresh_seed() -> int:
    return int(mx.random.randint(0, 2**31 - 1, ()).item())
