"""Sampling parameters, and the one function that turns a decode step's logits into tokens and logprobs.

The recorded logprob of a token is log-softmax(logits / T) at that token, under the *full* tempered
distribution: the distribution the learner recomputes, so the on-policy ratio is 1. Top-k, top-p and
min-p only truncate which tokens may be drawn. Temperature 0 is greedy, with the unscaled model's logprobs.

Cost per step is what matters here (MLX's x86 CPU `exp` is scalar outside compiled kernels, ~15 ns an element),
so `sample_tokens` runs compiled and does exactly one transcendental pass over the vocabulary,
`w = exp(x - max x)`, and draws from it:
- its sum gives log-sum-exp, so the logprob of the drawn token is one gather, not a [B, V] log-softmax;
- the draw is by inverse CDF (cumsum of `w`, one uniform number per row) instead of Gumbel-max, which
  would cost two logs and a random number per vocabulary entry;
- top-k takes the k largest by partition (no sort of the vocabulary); top-p then sorts only those k
  (the vocabulary only when top-p is used without top-k) and renormalizes within them, as HF does;
- min-p compares `w` with `min_p` directly: the most likely token has `w` = 1 exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import mlx.core as mx


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


def sample_tokens(logits: mx.array, params: SamplingParams, uniforms: mx.array) -> tuple[mx.array, mx.array]:
    """One token per row of `logits` [B, V], and its logprob under log-softmax(logits / T): ([B], [B]).

    `uniforms` [B, 1] are the draw's randomness, in (0, 1): the caller makes them in blocks (`Uniforms`),
    as one small random draw per step costs more than the rest of a small batch's sampling.

    Runs compiled, one compiled function per truncation setting and stream: MLX fuses the elementwise work
    into kernels that its JIT builds for this CPU (`lazarus.platform.setup_native_jit`), so `exp` runs
    in SIMD, and a step launches a few kernels instead of a dozen ops (at batch 32 and a 1k vocabulary
    0.22-0.44 ms a step against 0.57-0.88 eager; at a 49k vocabulary 8-19 ms against 30-42).
    """
    # the stream by name: Stream objects compare equal but hash by identity
    key = (params.temperature, params.top_k, params.top_p, params.min_p, repr(mx.default_stream(mx.default_device())))
    fn = _compiled.get(key)
    if fn is None:
        fn = _compiled[key] = mx.compile(functools.partial(_sample, *key[:4]))
    return fn(logits, uniforms)


_compiled: dict = {}  # (temperature, top_k, top_p, min_p, stream) -> compiled `_sample`


def _sample(temperature: float, top_k: int, top_p: float, min_p: float, logits: mx.array,
            uniforms: mx.array) -> tuple[mx.array, mx.array]:
    x = logits if logits.dtype == mx.float32 else logits.astype(mx.float32)
    if temperature not in (0.0, 1.0):
        x = x * (1.0 / temperature)
    x_max = x.max(axis=-1, keepdims=True)
    weights = mx.exp(x - x_max)  # the one pass of exp over the vocabulary; the largest weight is 1
    log_z = x_max.squeeze(-1) + mx.log(weights.sum(axis=-1))
    if temperature == 0:  # greedy, with the unscaled model's logprobs
        tokens = mx.argmax(x, axis=-1)
        return tokens, _gather(x, tokens) - log_z

    candidates = None  # vocabulary ids of the columns of `weights`; None while that is the whole vocabulary
    vocab = x.shape[-1]
    if 0 < top_k < vocab:
        candidates = mx.argpartition(-x, top_k - 1, axis=-1)[:, :top_k]
        weights = mx.take_along_axis(weights, candidates, axis=-1)
    if top_p < 1.0:
        # the nucleus: the most likely tokens until they hold top_p of the (top-k) mass, the first always;
        # found on sorted weights, then applied as a threshold so the candidates need no reordering
        ordered = -mx.sort(-weights, axis=-1)
        cumulative = mx.cumsum(ordered, axis=-1)
        in_nucleus = cumulative - ordered < top_p * cumulative[:, -1:]
        threshold = mx.where(in_nucleus, ordered, mx.inf).min(axis=-1, keepdims=True)
        weights = mx.where(weights >= threshold, weights, 0.0)
    if min_p > 0.0:
        weights = mx.where(weights >= min_p, weights, 0.0)

    # Inverse-CDF draw: the first column whose cumulative weight reaches u * total. u > 0, so that column
    # has weight > 0 (truncated tokens are never drawn), and u * total <= total, so there is one.
    cdf = mx.cumsum(weights, axis=-1)
    column = (cdf < uniforms * cdf[:, -1:]).sum(axis=-1)
    tokens = column if candidates is None else _gather(candidates, column)
    return tokens, _gather(x, tokens) - log_z


def _gather(rows: mx.array, columns: mx.array) -> mx.array:
    return mx.take_along_axis(rows, columns[:, None], axis=-1).squeeze(-1)


class Uniforms:
    """Uniform numbers in (0, 1) for `sample_tokens`, drawn `steps` rows at a time from a seeded key chain."""

    def __init__(self, seed: int, width: int, steps: int = 64):
        self._key = mx.random.key(seed)
        self._shape = (steps, max(width, 1))
        self._block, self._row = None, steps

    def next(self, rows: int) -> mx.array:
        """[rows, 1] fresh uniforms (rows <= width)."""
        if self._row == self._shape[0]:
            self._key, sub = mx.random.split(self._key)
            # low > 0: a draw of exactly 0 could pick a truncated (zero-weight) first column
            self._block, self._row = mx.random.uniform(low=1e-12, high=1.0, shape=self._shape, key=sub), 0
        self._row += 1
        return self._block[self._row - 1, :rows, None]


def fresh_seed() -> int:
    return int(mx.random.randint(0, 2**31 - 1, ()).item())
