"""Our engine vs mlx-lm's own batched generation, same model, prompts, batch size and max tokens.

Both decode exactly `max_tokens` per sequence (EOS is disabled for the run so the work is equal) at
temperature 1. Ours also returns the per-token logprobs; the mlx-lm baseline returns only tokens.
Prints tokens/s for both and the ratio ours/mlx-lm per batch size. Target: ratio >= 0.95 everywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time

import lazarus  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx
from mlx_lm.generate import batch_generate
from mlx_lm.sample_utils import make_sampler as mlx_lm_sampler

from lazarus.inference.engine import Engine
from lazarus.inference.sampling import SamplingParams
from lazarus.models.load import load, num_parameters
from lazarus.models.tiny import init_model


@contextlib.contextmanager
def eos_disabled(tokenizer):
    saved = tokenizer.eos_token_ids
    tokenizer.eos_token_ids = set()
    try:
        yield
    finally:
        tokenizer.eos_token_ids = saved


def make_prompts(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(rng.randint(8, 32))] for _ in range(batch)]


def run_ours(engine: Engine, prompts, max_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    out = engine.generate(prompts, n=1, params=SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=0))
    elapsed = time.perf_counter() - start
    assert all(len(c.logprobs) == len(c.token_ids) for c in out)
    return sum(len(c.token_ids) for c in out), elapsed


def run_mlx_lm(model, tokenizer, prompts, max_tokens: int, batch: int) -> tuple[int, float]:
    start = time.perf_counter()
    out = batch_generate(model, tokenizer, prompts, max_tokens=max_tokens, return_token_ids=True,
                         sampler=mlx_lm_sampler(temp=1.0), completion_batch_size=max(batch, 1),
                         prefill_batch_size=min(batch, 16))
    elapsed = time.perf_counter() - start
    return sum(len(t) for t in out.token_ids), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="Model directory (default: a random-init model of --size).")
    parser.add_argument("--size", default="small", choices=["micro", "tiny", "small"])
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    path = args.model or init_model("llama", args.size, tempfile.mkdtemp(prefix="lazarus-bench-") + "/m")
    model, tokenizer = load(path)
    vocab = model.args.vocab_size
    print(f"model {path}: {num_parameters(model) / 1e6:.1f}M params, max_tokens {args.max_tokens}, "
          f"temperature 1, float32, {mx.default_device()}")
    print(f"{'batch':>5} {'mlx-lm tok/s':>13} {'ours tok/s':>11} {'ratio':>6}")
    ratios = []
    with eos_disabled(tokenizer):
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            prompts = make_prompts(batch, vocab)
            engine = Engine(model, tokenizer, completion_batch_size=max(batch, 1), prefill_batch_size=min(batch, 16))
            run_ours(engine, prompts, 8)  # warm-up both paths
            run_mlx_lm(model, tokenizer, prompts, 8, batch)
            ours, base = [], []
            for _ in range(args.repeats):  # interleave so drift hits both equally
                n, t = run_mlx_lm(model, tokenizer, prompts, args.max_tokens, batch)
                base.append(n / t)
                n, t = run_ours(engine, prompts, args.max_tokens)
                ours.append(n / t)
            b, o = statistics.median(base), statistics.median(ours)
            ratios.append(o / b)
            print(f"{batch:>5} {b:>13.1f} {o:>11.1f} {o / b:>6.2f}")
    print(f"min ratio ours/mlx-lm = {min(ratios):.2f} (target >= 0.95; ours also returns logprobs)")


if __name__ == "__main__":
    main()
