"""Batched generation with KV caches that returns token ids, per-token logprobs and a finish reason.

`Engine.generate(prompt_ids, n, params)` returns one `Completion` per (prompt, sample), prompt-major. Each
completion keeps the tokens exactly as sampled (EOS included when the model emitted it) with the logprob
of each under log-softmax(logits / temperature), so the learner never re-tokenizes and its ratio against
these behavior logprobs is exactly 1 when on-policy.

The decode loop is our own, on mlx-lm's models and batched KV caches:
- group prefix sharing: each prompt is prefilled once, and its cache rows are repeated for its `n`
  completions, whose first tokens are all drawn from that one prefill's logits;
- continuous batching in whole groups: as sequences finish, their rows leave the batch and the next
  prompts' groups join it, up to `completion_batch_size` rows (a group larger than that joins in
  slices, each prefilled once);
- one host sync per step (the sampled tokens and their logprobs, which stopping needs), made while the
  next step's forward is already queued, so bookkeeping overlaps the model;
- sampling is `sampling.sample_tokens`: one pass of exp over the vocabulary per step;
- stop strings: a row's recent tokens are decoded only after a token whose text can end one (it holds a
  stop string's last character), and a stop string found in a sequence's last allowed token still cuts it.

Multi-turn episodes continue a sequence without re-prefilling it: `generate(..., keep_cache=True)` leaves
each completion's KV cache on `Completion.cache` (with `cached_tokens` saying how many tokens of prompt +
token_ids it holds), and `generate(suffixes, n, params, caches=[...])` appends each suffix (the tokens the
cache lacks, then the new observation) to its cache and samples on from there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import BatchKVCache, KVCache

from lazarus.errors import LazarusError
from lazarus.inference.sampling import SamplingParams, Uniforms, fresh_seed, sample_tokens
from lazarus.models.forward import cache_kinds


class UnsupportedModelError(LazarusError, ValueError):
    """The model needs a KV cache the engine cannot batch (sliding-window, recurrent or quantized caches)."""


class _BatchCache(BatchKVCache):
    """mlx-lm's batched KV cache, which also knows on the host whether any row is left-padded: when none
    is (one sequence, or prompts of one length), attention runs without a mask array.

    It grows by 32 positions at a time, not mlx-lm's 256: a row's cache is as long as its sequence
    rounded up to a step, and short RL completions on a small model made the 256-slot tail most of the
    memory (SmolLM2-135M: 12 MB a row, 755 MB for 64 rows of ~80 tokens; 4.5 MB a row now)."""

    step = 32

    def __init__(self, left_padding: list[int]):
        super().__init__(left_padding)
        self.padded = any(p > 0 for p in left_padding)

    def make_mask(self, N: int, return_array: bool = False, **kwargs):
        if self.padded or return_array or kwargs.get("window_size") is not None:
            return super().make_mask(N, return_array=return_array, **kwargs)
        return None if N == 1 else "causal"

    def finalize(self):
        self.padded = self.padded or self._right_padding is not None
        super().finalize()

    def filter(self, batch_indices):
        super().filter(batch_indices)
        self.padded = max(self.left_padding.tolist(), default=0) > 0

    def extend(self, other):
        super().extend(other)
        self.padded = max(self.left_padding.tolist(), default=0) > 0


class SequenceCache:
    """The KV cache of one sequence, one entry per layer (opaque to callers; pass it back via `caches=`)."""

    def __init__(self, layers: list[KVCache]):
        self.layers = layers

    @property
    def num_tokens(self) -> int:
        return self.layers[0].offset if self.layers else 0


@dataclass
class Completion:
    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]  # one per token in token_ids
    finish_reason: str  # "stop" (EOS / stop token / stop string) or "length"
    text: str = ""  # decoded completion, EOS and stop string removed
    cache: Optional[SequenceCache] = None  # with keep_cache=True: this sequence's KV cache
    cached_tokens: int = 0  # how many tokens of (prompt + token_ids) `cache` holds, from the start


@dataclass
class StreamEvent:
    token: int
    logprob: float
    text: str  # the newly decoded text (may be empty while a multi-byte character is pending)
    finish_reason: Optional[str]


@dataclass
class _Step:
    """What one decode step produced for one sequence."""

    sequence: int
    token: int
    logprob: float
    finish_reason: Optional[str]


class Engine:
    """Generation over one policy model (whatever weights or adapters it holds right now)."""

    def __init__(self, model: nn.Module, tokenizer, completion_batch_size: int = 64,
                 prefill_batch_size: int = 16, prefill_step_size: int = 2048):
        self.model = model
        self.tokenizer = tokenizer
        self.completion_batch_size = completion_batch_size
        self.prefill_batch_size = prefill_batch_size
        self.prefill_step_size = prefill_step_size
        kinds = cache_kinds(model)
        if kinds != {"KVCache"}:
            raise UnsupportedModelError(f"model {type(model).__name__} uses {', '.join(sorted(kinds))} caches; "
                                        "the engine batches models whose layers all use a plain KVCache")
        self.num_layers = len(model.layers)
        # The engine's own stream, as mlx-lm's generator has: its work queues apart from what the rest of
        # the process (a learner thread, say) runs on the default stream.
        self.stream_id = mx.new_stream(mx.default_device())
        self._token_texts: Optional[list[str]] = None  # each token id's text, decoded alone
        self._stop_enders: dict[frozenset[str], frozenset[int]] = {}

    @property
    def eos_token_ids(self) -> list[int]:
        ids = getattr(self.tokenizer, "eos_token_ids", None)
        if ids is None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
            ids = [] if eos is None else [eos]
        return sorted(ids)

    def generate(self, prompt_ids: Sequence[Sequence[int]] | Sequence[int], n: int = 1,
                 params: SamplingParams | None = None, *, keep_cache: bool = False,
                 caches: Sequence[Optional[SequenceCache]] | None = None) -> list[Completion]:
        """`n` completions for each prompt (a list of token ids, or a list of such lists).

        With `caches`, prompt i is the suffix to append to `caches[i]` (which is not modified); with
        `keep_cache`, each completion carries its own KV cache for a later `caches=` call.
        """
        params = params or SamplingParams()
        prompts = [list(prompt_ids)] if prompt_ids and isinstance(prompt_ids[0], int) else [list(p) for p in prompt_ids]
        stops = params.stop
        tokens: list[list[int]] = [[] for _ in range(len(prompts) * n)]
        logprobs: list[list[float]] = [[] for _ in tokens]
        finish: list[Optional[str]] = [None] * len(tokens)
        kept: list[Optional[SequenceCache]] = [None] * len(tokens)
        for step in self._decode_loop(prompts, n, params, caches, kept if keep_cache else None):
            for s in step:
                tokens[s.sequence].append(s.token)
                logprobs[s.sequence].append(s.logprob)
                finish[s.sequence] = s.finish_reason
        completions = []
        for i, (toks, lps) in enumerate(zip(tokens, logprobs)):
            text = self._decode(toks)
            if stops and finish[i] == "stop":
                text = text[: min((text.find(s) for s in stops if s in text), default=len(text))]
            cache = kept[i]
            completions.append(Completion(i // n, toks, lps, finish[i] or "length", text, cache,
                                          cache.num_tokens if cache else 0))
        return completions

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> Iterator[StreamEvent]:
        """Tokens of one completion as they are generated (for `lazarus infer`)."""
        params = params or SamplingParams()
        detok = self.tokenizer.detokenizer
        detok.reset()
        eos = set(self.eos_token_ids)
        emitted = ""
        for step in self._decode_loop([list(prompt_ids)], 1, params, None, None):
            s = step[0]
            if s.token not in eos:
                detok.add_token(s.token)
            if s.finish_reason is not None:
                detok.finalize()
            text = detok.text
            delta, emitted = text[len(emitted):], text
            stop_at = min((emitted.find(x) for x in params.stop if x in emitted), default=-1)
            if stop_at >= 0:
                keep = stop_at - (len(emitted) - len(delta))
                yield StreamEvent(s.token, s.logprob, delta[: max(keep, 0)], "stop")
                return
            yield StreamEvent(s.token, s.logprob, delta, s.finish_reason)

    # -- the decode loop -------------------------------------------------------------------------------

    def _decode_loop(self, prompts: list[list[int]], n: int, params: SamplingParams,
                     caches: Sequence[Optional[SequenceCache]] | None,
                     kept: Optional[list]) -> Iterator[list[_Step]]:
        """Yields, per decode step, the new token of every sequence still running (sequence = prompt * n + j).

        `kept[sequence]` receives each finished sequence's cache when `kept` is given.
        """
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        if caches is not None and len(caches) != len(prompts):
            raise ValueError(f"caches has {len(caches)} entries for {len(prompts)} prompts")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
        eos = set(self.eos_token_ids)
        stop_ids = eos | set(params.stop_token_ids)
        # What joins the batch: (prompt, first sample, samples) slices of whole groups, split only when a
        # group alone is larger than the batch; each slice is prefilled once.
        capacity = max(self.completion_batch_size, 1)
        uniforms = Uniforms(params.seed if params.seed is not None else fresh_seed(), capacity)
        waiting = deque((i, j, min(n - j, capacity)) for i in range(len(prompts)) for j in range(0, n, capacity))
        produced: list[list[int]] = [[] for _ in range(len(prompts) * n)]
        stops = params.stop
        window = 4 * max((len(x) for x in stops), default=0) + 4  # enough tokens to hold any stop string
        enders = self._tokens_that_may_end(stops) if stops else None
        rows: list[int] = []  # the sequence in each batch row
        batch_cache: Optional[list[_BatchCache]] = None
        next_tokens = next_logprobs = None  # drawn for each row, not yet fed to the model

        while waiting or rows:
            with mx.stream(self.stream_id):  # the model's work, on the engine's stream
                admitted = []
                while waiting and len(rows) + sum(a[2] for a in admitted) + waiting[0][2] <= capacity:
                    admitted.append(waiting.popleft())
                for start in range(0, len(admitted), self.prefill_batch_size):
                    slices = admitted[start : start + self.prefill_batch_size]
                    cache, logits = self._prefill([prompts[i] for i, _, _ in slices],
                                                  [caches[i] if caches is not None else None for i, _, _ in slices])
                    if any(count > 1 for _, _, count in slices):  # share each prefill: repeat rows, not compute
                        shared = mx.array([k for k, (_, _, count) in enumerate(slices) for _ in range(count)])
                        for c in cache:
                            c.filter(shared)
                        logits = logits[shared]
                    drawn, drawn_logprobs = sample_tokens(logits, params, uniforms.next(logits.shape[0]))
                    if batch_cache is None:
                        batch_cache, next_tokens, next_logprobs = cache, drawn, drawn_logprobs
                    else:
                        for mine, theirs in zip(batch_cache, cache):
                            mine.extend(theirs)
                        next_tokens = mx.concatenate([next_tokens, drawn])
                        next_logprobs = mx.concatenate([next_logprobs, drawn_logprobs])
                    rows += [i * n + j for i, first, count in slices for j in range(first, first + count)]

                # Queue the next step before looking at this one, unless every row ends here by length.
                tokens, token_logprobs = next_tokens, next_logprobs
                if any(len(produced[s]) + 1 < params.max_tokens for s in rows):
                    logits = self.model(tokens[:, None], cache=batch_cache)[:, -1, :]
                    next_tokens, next_logprobs = sample_tokens(logits, params, uniforms.next(len(rows)))
                    mx.async_eval(next_tokens, next_logprobs)
                else:
                    next_tokens = next_logprobs = None

            step, running = [], []
            for b, (s, token, logprob) in enumerate(zip(rows, tokens.tolist(), token_logprobs.tolist())):
                produced[s].append(token)
                reason = None
                if token in stop_ids:
                    reason = "stop"
                elif stops and (enders is None or token in enders) and \
                        any(x in self._decode(produced[s][-window:], eos) for x in stops):
                    reason = "stop"  # before "length": a stop string in the last token still cuts the text
                elif len(produced[s]) >= params.max_tokens:
                    reason = "length"
                step.append(_Step(s, token, logprob, reason))
                if reason is None:
                    running.append(b)
            yield step

            with mx.stream(self.stream_id):
                if len(running) < len(rows):
                    if kept is not None:
                        for b, st in enumerate(step):
                            if st.finish_reason is not None:
                                kept[st.sequence] = SequenceCache([c.extract(b) for c in batch_cache])
                    rows = [rows[b] for b in running]
                    if not rows:
                        batch_cache = next_tokens = next_logprobs = None
                    elif next_tokens is not None:
                        keep = mx.array(running)
                        for c in batch_cache:
                            c.filter(keep)
                        next_tokens, next_logprobs = next_tokens[keep], next_logprobs[keep]

    def _prefill(self, prompts: list[list[int]], caches: list[Optional[SequenceCache]]):
        """Feed each prompt (after its cache, if any) in one batch: (batched cache, logits [B, V] at each end).

        All but each prompt's last token go in first, right-padded, and only the caches are evaluated, so
        the vocabulary projection never runs over the prompt; `finalize` turns that padding into left
        padding, which the attention mask hides. The last tokens then go in as one decode step.
        """
        for c in caches:
            if c is not None and not isinstance(c, SequenceCache):
                raise TypeError(f"caches must hold Completion.cache values, got {type(c).__name__}")
        if all(c is None for c in caches):
            batch_cache = [_BatchCache([0] * len(prompts)) for _ in range(self.num_layers)]
        else:
            batch_cache = [_BatchCache.merge([c.layers[layer] if c is not None else KVCache() for c in caches])
                           for layer in range(self.num_layers)]
        lengths = [len(p) - 1 for p in prompts]
        longest = max(lengths)
        if longest > 0:
            padding = [longest - length for length in lengths]
            if any(padding):
                for c in batch_cache:
                    c.prepare(lengths=lengths, right_padding=padding)
            heads = mx.array([p[:-1] + [0] * pad for p, pad in zip(prompts, padding)])
            for start in range(0, longest, self.prefill_step_size):
                self.model(heads[:, start : start + self.prefill_step_size], cache=batch_cache)
                mx.eval([c.state for c in batch_cache])
            for c in batch_cache:
                c.finalize()
        logits = self.model(mx.array([[p[-1]] for p in prompts]), cache=batch_cache)[:, -1, :]
        return batch_cache, logits

    def _tokens_that_may_end(self, stops: list[str]) -> Optional[frozenset[int]]:
        """The token ids after which one of `stops` can first appear in the text; None: check after every token.

        An occurrence of a stop string first exists once the token that adds its last character is added, and
        a token's text decoded alone holds every character the token adds in context, or more (WordPiece keeps
        its "##"; byte-level BPE shows a partial character as U+FFFD, which counts). The exception is
        SentencePiece's leading space, dropped at the start of a text: a stop string that ends in whitespace
        (or is empty) is checked after every token. Decoding each row's window after every step cost ~1 ms of
        a batch-32 step's ~56 ms of CPU on a 10M model (48 tokens, for a 9-character stop string); most tokens
        now skip it.
        """
        if any(not x or x[-1].isspace() for x in stops):
            return None
        ends = frozenset(x[-1] for x in stops)
        if ends not in self._stop_enders:
            if self._token_texts is None:
                self._token_texts = _token_texts(self.tokenizer)
            if self._token_texts is None:
                return None
            self._stop_enders[ends] = frozenset(i for i, text in enumerate(self._token_texts)
                                                if "\ufffd" in text or not ends.isdisjoint(text))
        return self._stop_enders[ends]

    def _decode(self, token_ids: list[int], eos: set[int] | None = None) -> str:
        eos = set(self.eos_token_ids) if eos is None else eos
        return self.tokenizer.decode([t for t in token_ids if t not in eos])


def _token_texts(tokenizer) -> Optional[list[str]]:
    """The text of each token id of `tokenizer`, decoded alone (ids past the end decode to nothing); None
    when the tokenizer does not say its size."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)  # under mlx-lm's TokenizerWrapper
    try:
        ids = [[i] for i in range(len(hf))]
    except TypeError:
        return None
    rust = getattr(hf, "_tokenizer", None)  # a transformers fast tokenizer's own: decodes a batch at once
    if rust is not None and hasattr(rust, "decode_batch"):
        return rust.decode_batch(ids, skip_special_tokens=False)
    return [tokenizer.decode(i) for i in ids]


def chat_prompt_ids(tokenizer, prompt: str, chat: bool = True, system: str | None = None) -> list[int]:
    """Token ids for a user prompt, through the tokenizer's chat template when `chat` and one exists."""
    if chat and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer.encode(prompt))
