"""Batched generation with KV caches that returns token ids, per-token logprobs and a finish reason.

Built on mlx-lm's `BatchGenerator` (continuous batching over its KV caches). `Engine.generate` takes
token-id prompts and `n` completions per prompt, and returns one `Completion` per (prompt, sample),
prompt-major. Each completion keeps the tokens exactly as sampled (EOS included when the model
emitted it) with the logprob of each under log-softmax(logits / temperature), so the learner never
re-tokenizes and its ratio against these behavior logprobs is exactly 1 when on-policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import BatchGenerator

from lazarus.inference.sampling import SamplingParams, make_sampler


@dataclass
class Completion:
    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]  # one per token in token_ids
    finish_reason: str  # "stop" (EOS / stop token / stop string) or "length"
    text: str = ""  # decoded completion, EOS and stop string removed


@dataclass
class StreamEvent:
    token: int
    logprob: float
    text: str  # the newly decoded text (may be empty while a multi-byte character is pending)
    finish_reason: Optional[str]


class _Tempered:
    """Presents `model` to mlx-lm with logits divided by the temperature (no copy of any weight)."""

    def __init__(self, model: nn.Module, temperature: float):
        self._model = model
        self._inv_t = 1.0 / temperature if temperature > 0 else 1.0

    def __call__(self, inputs, cache=None, **kwargs):
        logits = self._model(inputs, cache=cache, **kwargs)
        return logits * self._inv_t if self._inv_t != 1.0 else logits

    def __getattr__(self, name):
        return getattr(self._model, name)


class Engine:
    """Generation over one policy model (whatever weights or adapters it holds right now)."""

    def __init__(self, model: nn.Module, tokenizer, completion_batch_size: int = 64,
                 prefill_batch_size: int = 16, prefill_step_size: int = 2048):
        self.model = model
        self.tokenizer = tokenizer
        self.completion_batch_size = completion_batch_size
        self.prefill_batch_size = prefill_batch_size
        self.prefill_step_size = prefill_step_size

    @property
    def eos_token_ids(self) -> list[int]:
        ids = getattr(self.tokenizer, "eos_token_ids", None)
        if ids is None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
            ids = [] if eos is None else [eos]
        return sorted(ids)

    def _generator(self, params: SamplingParams) -> BatchGenerator:
        stop_ids = sorted(set(self.eos_token_ids) | set(params.stop_token_ids))
        return BatchGenerator(
            _Tempered(self.model, params.temperature),
            max_tokens=params.max_tokens,
            stop_tokens=[[t] for t in stop_ids] or None,
            sampler=make_sampler(params),
            completion_batch_size=self.completion_batch_size,
            prefill_batch_size=self.prefill_batch_size,
            prefill_step_size=self.prefill_step_size,
        )

    def generate(self, prompt_ids: Sequence[Sequence[int]] | Sequence[int], n: int = 1,
                 params: SamplingParams | None = None) -> list[Completion]:
        """`n` completions for each prompt (a list of token ids, or a list of such lists)."""
        params = params or SamplingParams()
        prompts = [list(prompt_ids)] if prompt_ids and isinstance(prompt_ids[0], int) else [list(p) for p in prompt_ids]
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
        expanded = [p for p in prompts for _ in range(n)]
        gen = self._generator(params)
        try:
            uids = gen.insert(expanded)
            slot = {uid: i for i, uid in enumerate(uids)}
            tokens: list[list[int]] = [[] for _ in expanded]
            logprobs: list[list[float]] = [[] for _ in expanded]
            finish: list[Optional[str]] = [None] * len(expanded)
            cut_text: list[Optional[str]] = [None] * len(expanded)
            while responses := gen.next_generated():
                # One gather for the whole batch: the logprob of each sampled token.
                rows = mx.stack([r.logprobs for r in responses])
                picked = mx.take_along_axis(rows, mx.array([[r.token] for r in responses]), axis=-1)
                for r, lp in zip(responses, picked.squeeze(-1).tolist()):
                    i = slot[r.uid]
                    tokens[i].append(r.token)
                    logprobs[i].append(lp)
                    if r.finish_reason is not None:
                        finish[i] = r.finish_reason
                if params.stop:
                    done = self._apply_stop_strings(params.stop, responses, slot, tokens, finish, cut_text)
                    if done:
                        gen.remove(done)
        finally:
            gen.close()
        completions = []
        for i, (toks, lps) in enumerate(zip(tokens, logprobs)):
            text = cut_text[i] if cut_text[i] is not None else self._decode(toks)
            completions.append(Completion(i // n, toks, lps, finish[i] or "length", text))
        return completions

    def _apply_stop_strings(self, stops, responses, slot, tokens, finish, cut_text) -> list[int]:
        """Mark sequences whose decoded text now contains a stop string; returns uids to remove."""
        done = []
        for r in responses:
            i = slot[r.uid]
            if finish[i] is not None:
                continue
            text = self._decode(tokens[i])
            hits = [text.find(s) for s in stops if s in text]
            if hits:
                finish[i] = "stop"
                cut_text[i] = text[: min(hits)]
                done.append(r.uid)
        return done

    def _decode(self, token_ids: list[int]) -> str:
        eos = set(self.eos_token_ids)
        return self.tokenizer.decode([t for t in token_ids if t not in eos])

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> Iterator[StreamEvent]:
        """Tokens of one completion as they are generated (for `lazarus infer`)."""
        params = params or SamplingParams()
        gen = self._generator(params)
        detok = self.tokenizer.detokenizer
        detok.reset()
        eos = set(self.eos_token_ids)
        emitted = ""
        try:
            gen.insert([list(prompt_ids)])
            while responses := gen.next_generated():
                r = responses[0]
                lp = float(r.logprobs[r.token].item())
                if r.token not in eos:
                    detok.add_token(r.token)
                if r.finish_reason is not None:
                    detok.finalize()
                text = detok.text
                delta, emitted = text[len(emitted):], text
                stop_at = min((emitted.find(s) for s in params.stop if s in emitted), default=-1)
                if stop_at >= 0:
                    keep = stop_at - (len(emitted) - len(delta))
                    yield StreamEvent(r.token, lp, delta[: max(keep, 0)], "stop")
                    return
                yield StreamEvent(r.token, lp, delta, r.finish_reason)
                if r.finish_reason is not None:
                    return
        finally:
            gen.close()


def chat_prompt_ids(tokenizer, prompt: str, chat: bool = True, system: str | None = None) -> list[int]:
    """Token ids for a user prompt, through the tokenizer's chat template when `chat` and one exists."""
    if chat and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer.encode(prompt))
