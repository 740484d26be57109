"""Token log-probabilities, entropies and masked reductions: the shared vocabulary of every loss.

Callers align `logits[:, t]` with `targets[:, t]` (the token that position t predicts); the shift
from input ids happens where the batch is built, not here. Masks are 0/1 (any dtype) and mark the
tokens that count: completion tokens produced by the model, never prompt, padding or tool tokens.

`chunked_token_logprobs` gets the same numbers from hidden states without ever holding the logits of
the whole sequence: the LM head and the selective log-softmax run over `chunk_size` positions at a
time (TRL's selective log-softmax, taken one step further), so at most one [B, chunk, V] float32
array is live, where a 135M model with a 49k vocabulary at 32 x 100 tokens needs 0.6 GB for each
full [B, T, V] one.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx


@mx.compile
def logsumexp(z: mx.array) -> mx.array:
    """log sum_v exp(z_v) over the last axis, kept: the same numbers as `mx.logsumexp(z, -1, keepdims=True)`.

    Written in elementwise ops so a compiled step fuses `exp` into a kernel that MLX's JIT builds for this
    CPU (`lazarus.platform.setup_native_jit`); MLX's own logsumexp kernel computes `exp` without SIMD on
    x86 (about 6x the time of this with its gradient, [32, 64, 1024] float32). Compiled itself for the
    callers that are not. A row of -inf gives -inf and +inf gives +inf, as MLX's does.
    """
    top = mx.stop_gradient(z.max(axis=-1, keepdims=True))
    top = mx.where(mx.abs(top) < float("inf"), top, 0.0)
    return top + mx.log(mx.exp(z - top).sum(axis=-1, keepdims=True))


def _scaled_logits(logits: mx.array, temperature: float) -> mx.array:
    """logits / temperature in float32 (bf16 logits lose too much in the log-sum-exp)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.astype(mx.float32)
    return logits / temperature if temperature != 1.0 else logits


def token_logprobs(logits: mx.array, targets: mx.array, temperature: float = 1.0) -> mx.array:
    """log softmax(logits / temperature)[target] per position: [B,T,V], [B,T] -> [B,T] float32.

    `temperature` must match the one used at sampling time so the ratio against behavior logprobs is
    between the same distributions.
    """
    logits = _scaled_logits(logits, temperature)
    # Gather first, then subtract the normaliser: never materialises a second [B,T,V] array.
    picked = mx.take_along_axis(logits, targets[..., None].astype(mx.int32), axis=-1).squeeze(-1)
    return picked - logsumexp(logits).squeeze(-1)


def token_entropy(logits: mx.array, temperature: float = 1.0) -> mx.array:
    """Entropy H = -sum_v p_v log p_v of the next-token distribution at each position: [B,T,V] -> [B,T]."""
    logits = _scaled_logits(logits, temperature)
    logp = logits - logsumexp(logits)
    return -(mx.exp(logp) * logp).sum(axis=-1)


def selective_log_softmax(logits: mx.array, targets: mx.array, temperature: float = 1.0,
                          with_entropy: bool = False) -> tuple[mx.array, mx.array | None]:
    """`token_logprobs` and (when asked) `token_entropy` from one scaled copy of `logits`: [B,T,V] -> [B,T].

    One normaliser serves both: log p_target = z_target - logZ and H = logZ - sum_v softmax(z)_v z_v.
    """
    z = _scaled_logits(logits, temperature)
    log_normalizer = logsumexp(z).squeeze(-1)
    picked = mx.take_along_axis(z, targets[..., None].astype(mx.int32), axis=-1).squeeze(-1)
    if not with_entropy:
        return picked - log_normalizer, None
    expected_z = (mx.exp(z - log_normalizer[..., None]) * z).sum(axis=-1)
    return picked - log_normalizer, log_normalizer - expected_z


def chunked_token_logprobs(hidden: mx.array, targets: mx.array, project: Callable[[mx.array], mx.array],
                           temperature: float = 1.0, chunk_size: int = 128, with_entropy: bool = False,
                           checkpoint: Callable[[Callable], Callable] | None = None,
                           ) -> tuple[mx.array, mx.array | None]:
    """Token logprobs (and entropies) from hidden states [B,T,H], `project`ing `chunk_size` positions at a time.

    `project` maps [B, c, H] hidden states to [B, c, V] logits (the LM head). Equal to
    `token_logprobs(project(hidden), targets, temperature)` up to float rounding, but only one chunk's
    logits exist at a time. Under a gradient transform every chunk's logits would be kept for the
    backward pass; `checkpoint` (e.g. `lambda f: mlx.nn.utils.checkpoint(model, f)`) wraps each chunk's
    computation so the backward pass recomputes them instead.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if hidden.shape[:2] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} differ in [B, T]")

    def chunk(hidden_chunk: mx.array, target_chunk: mx.array):
        target_chunk = mx.stop_gradient(target_chunk)  # token ids: a checkpoint differentiates every input
        logprobs, entropy = selective_log_softmax(project(hidden_chunk), target_chunk, temperature, with_entropy)
        return (logprobs, entropy) if with_entropy else logprobs

    run = checkpoint(chunk) if checkpoint is not None else chunk
    logprob_chunks, entropy_chunks = [], []
    for start in range(0, targets.shape[1], chunk_size):
        hidden_chunk = hidden[:, start:start + chunk_size]
        if logprob_chunks:
            # MLX may evaluate independent branches side by side, which would hold every chunk's logits
            # at once; depending on the previous chunk's result makes the chunks run one after another.
            hidden_chunk = mx.depends(hidden_chunk, logprob_chunks[-1])
        out = run(hidden_chunk, targets[:, start:start + chunk_size])
        if with_entropy:
            logprob_chunks.append(out[0])
            entropy_chunks.append(out[1])
        else:
            logprob_chunks.append(out)
    if not logprob_chunks:  # an empty sequence
        empty = mx.zeros(targets.shape, mx.float32)
        return empty, (empty if with_entropy else None)
    logprobs = mx.concatenate(logprob_chunks, axis=1)
    return logprobs, (mx.concatenate(entropy_chunks, axis=1) if with_entropy else None)


def linear_token_logprobs(hidden: mx.array, weight: mx.array, targets: mx.array, temperature: float = 1.0,
                          chunk_size: int = 32, with_entropy: bool = False, weight_grad: bool = True,
                          ) -> tuple[mx.array, mx.array | None]:
    """Token logprobs (and entropies) under logits = hidden @ weight.T, chunk by chunk, forward and backward.

    `hidden` [B,T,H], `weight` [V,H] (the LM head, or the tied embedding), `targets` [B,T]. The same
    numbers as `token_logprobs(hidden @ weight.T, targets, temperature)` (and `token_entropy`); the
    gradient is written out per chunk, d z = (onehot - p) g_logprob - p (log p + H) g_entropy with
    z = logits / temperature, and the chunks are chained in both passes, so at most one [B, chunk_size, V]
    block of logits (and one of its gradient) is live at a time: the full [B, T, V] logits exist neither
    in the forward nor in the backward pass. `weight_grad=False` (a frozen head, as under LoRA) skips
    the [V, H] weight gradient, which is then returned as zeros.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if hidden.shape[:2] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} differ in [B, T]")
    if targets.shape[1] == 0:
        empty = mx.zeros(targets.shape, mx.float32)
        return empty, (empty if with_entropy else None)
    inv_t = 1.0 / temperature
    spans = [(s, min(s + chunk_size, targets.shape[1])) for s in range(0, targets.shape[1], chunk_size)]

    def log_softmax_chunk(h, w):
        z = (h @ w.T).astype(mx.float32) * inv_t
        return z - logsumexp(z)

    @mx.custom_function
    def forward(h, w, t):
        logprobs, entropies = [], []
        for start, end in spans:
            h_chunk = h[:, start:end]
            if logprobs:  # one chunk after another (see `chunked_token_logprobs`)
                h_chunk = mx.depends(h_chunk, logprobs[-1])
            logp = log_softmax_chunk(h_chunk, w)
            logprobs.append(mx.take_along_axis(logp, t[:, start:end, None], axis=-1).squeeze(-1))
            if with_entropy:
                entropies.append(-(mx.exp(logp) * logp).sum(axis=-1))
        logprobs = mx.concatenate(logprobs, axis=1)
        return (logprobs, mx.concatenate(entropies, axis=1)) if with_entropy else logprobs

    @forward.vjp
    def forward_vjp(primals, cotangents, outputs):
        h, w, t = primals
        if with_entropy:
            (g_logprob, g_entropy), entropy = cotangents, outputs[1]
        else:
            g_logprob = cotangents[0] if isinstance(cotangents, (list, tuple)) else cotangents
        grad_h, grad_w = [], mx.zeros(w.shape, mx.float32)
        for start, end in spans:
            h_chunk = h[:, start:end]
            if grad_h:
                h_chunk = mx.depends(h_chunk, [grad_h[-1], grad_w] if weight_grad else grad_h[-1])
            logp = log_softmax_chunk(h_chunk, w)
            p = mx.exp(logp)
            onehot = mx.arange(p.shape[-1])[None, None, :] == t[:, start:end, None]
            grad_z = (onehot.astype(mx.float32) - p) * g_logprob[:, start:end, None]
            if with_entropy:
                grad_z = grad_z - p * (logp + entropy[:, start:end, None]) * g_entropy[:, start:end, None]
            grad_logits = (grad_z * inv_t).astype(w.dtype)
            grad_h.append((grad_logits @ w).astype(h.dtype))
            if weight_grad:
                grad_w = grad_w + (grad_logits.reshape(-1, grad_logits.shape[-1]).T
                                   @ h_chunk.reshape(-1, h_chunk.shape[-1])).astype(mx.float32)
        return mx.concatenate(grad_h, axis=1), grad_w.astype(w.dtype), mx.zeros_like(t)

    out = forward(hidden, weight, targets.astype(mx.int32))
    return (out[0], out[1]) if with_entropy else (out, None)


def masked_sum(x: mx.array, mask: mx.array, axis: int | None = None) -> mx.array:
    """sum(x * mask) over `axis` (all axes when None); masked-out entries may hold inf or NaN."""
    return mx.where(mask.astype(mx.bool_), x, 0.0).sum(axis=axis)


def masked_mean(x: mx.array, mask: mx.array, axis: int | None = None) -> mx.array:
    """sum(x * mask) / max(sum(mask), 1): an empty mask gives 0, never NaN."""
    count = mask.astype(mx.float32).sum(axis=axis)
    return masked_sum(x, mask, axis) / mx.maximum(count, 1.0)


def sequence_logprobs(token_logprobs: mx.array, mask: mx.array) -> mx.array:
    """log pi(completion | prompt) = sum of the masked (completion) token logprobs: [B,T] -> [B]."""
    return masked_sum(token_logprobs, mask, axis=-1)


LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregate_loss(loss: mx.array, mask: mx.array, mode: str = "token-mean",
                   normalizer: float | None = None) -> mx.array:
    """A [B,T] per-token loss to a scalar, by verl's `agg_loss` modes (verl/trainer/ppo/core_algos.py):

    - token-mean:              sum over valid tokens / their number (DAPO; TRL "dapo"/"bnpo")
    - seq-mean-token-sum:      mean over sequences of each sequence's token sum
    - seq-mean-token-mean:     mean over sequences of each sequence's token mean (GRPO; TRL "grpo")
    - seq-mean-token-sum-norm: sum over all valid tokens / `normalizer` (default T, the padded length;
                               Dr. GRPO: keep it a constant such as the maximum completion length)

    Sequences without a valid token count as 0 in the seq-mean modes, as in verl.
    """
    if mode == "token-mean":
        return masked_mean(loss, mask)
    if mode == "seq-mean-token-sum":
        return masked_sum(loss, mask, axis=-1).mean()
    if mode == "seq-mean-token-mean":
        return masked_mean(loss, mask, axis=-1).mean()
    if mode == "seq-mean-token-sum-norm":
        return masked_sum(loss, mask) / float(normalizer or loss.shape[-1])
    raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {mode!r}")
