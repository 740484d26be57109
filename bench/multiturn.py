"""Multi-turn rollout throughput: KV-cache reuse vs re-prefilling the whole history every turn.

Runs batched episodes of a random-init model against an env that answers every turn with a short tool
message, for `--turns` turns of about `--tokens-per-turn` tokens each, twice on the same tasks: once
re-prefilling prompt + all earlier turns at each
turn (works with any engine), once continuing each episode from its KV cache (only when the engine's
`generate` accepts `caches=`/`keep_cache=`). Prints model tokens/s for each and `ratio R` = cache / re-prefill
(higher is better). The single-turn baseline (the same number of model tokens in one generate call per
episode) is measured in the same run too, as the ceiling.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import lazarus  # noqa: F401  (OpenBLAS before mlx.core)
from lazarus.data.trajectory import RolloutTask, SamplingSettings
from lazarus.env.multiturn import run_episodes, supports_cache_reuse
from lazarus.env.observation import prompt_ids
from lazarus.env.protocol import Observation, StepResult
from lazarus.inference.engine import Engine
from lazarus.inference.sampling import SamplingParams


class EchoEnv:
    """Answers every turn with the same tool message; never done (the turn limit ends the episode)."""

    def reset(self, task):
        return Observation()

    def step(self, action_text):
        return StepResult(Observation([{"role": "tool", "content": "result: 12345 (ok)"}]), 0.0, False, {})


def measure(engine, task, params, turns, reuse) -> dict:
    start = time.perf_counter()
    results = run_episodes(engine, task, [], EchoEnv, params, max_turns=turns, max_total_tokens=1 << 16,
                           observation_max_tokens=32, reuse_cache=reuse)
    seconds = time.perf_counter() - start
    model_tokens = sum(sum(e.mask) for e, _ in results)
    return {"seconds": seconds, "model_tokens": model_tokens, "tokens_per_s": model_tokens / seconds,
            "turns_mean": sum(e.turns for e, _ in results) / len(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="tiny", help="micro, tiny or small random-init llama")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--tokens-per-turn", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="micro model, 8 episodes, 3 turns")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.size, args.episodes, args.turns, args.tokens_per_turn = "micro", 8, 3, 16

    from lazarus.models.load import load
    from lazarus.models.tiny import init_model

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load(init_model("llama", args.size, f"{tmp}/model", seed=0))
    engine = Engine(model, tokenizer, completion_batch_size=args.episodes)
    rows = [{"prompt": f"Question {i}: what is {i} * 17?"} for i in range(args.episodes)]
    prompts = [prompt_ids(tokenizer, [{"role": "user", "content": r["prompt"]}]) for r in rows]
    task = RolloutTask("bench", prompts, rows, [f"g{i}" for i in range(len(rows))], 1, SamplingSettings(),
                       max_tokens=args.tokens_per_turn, policy_version=0)
    # A turn ends at any of 1/tokens_per_turn of the vocabulary (stop token ids), so turns average about
    # tokens_per_turn tokens, end with "stop" and the episode goes on; the same seed gives both runs the same work.
    vocab = len(tokenizer.get_vocab()) if hasattr(tokenizer, "get_vocab") else 512
    stops = list(range(7, vocab, args.tokens_per_turn))
    params = SamplingParams(max_tokens=8 * args.tokens_per_turn, seed=0, stop_token_ids=stops)
    measure(engine, task, params, 1, False)  # warm-up (compiles)
    reprefill = measure(engine, task, params, args.turns, False)
    cached = measure(engine, task, params, args.turns, True) if supports_cache_reuse(engine) else None
    single_start = time.perf_counter()
    single = engine.generate(prompts, 1, SamplingParams(max_tokens=args.tokens_per_turn * args.turns, seed=0))
    single_s = time.perf_counter() - single_start
    single_tps = sum(len(c.token_ids) for c in single) / single_s
    result = {"episodes": args.episodes, "turns": args.turns, "tokens_per_turn": args.tokens_per_turn,
              "reprefill": reprefill, "cache": cached, "single_turn_tokens_per_s": single_tps,
              "ratio_cache_over_reprefill": cached["tokens_per_s"] / reprefill["tokens_per_s"] if cached else None}
    if args.json:
        print(json.dumps(result))
        return
    print(f"multi-turn rollout: {args.episodes} episodes x {args.turns} turns x {args.tokens_per_turn} model tokens "
          f"({args.size} model)")
    print(f"  re-prefill every turn  {reprefill['tokens_per_s']:9.1f} model tokens/s  ({reprefill['seconds']:.2f}s, "
          f"{reprefill['model_tokens']} model tokens, {reprefill['turns_mean']:.1f} turns per episode)")
    if cached:
        print(f"  KV-cache reuse         {cached['tokens_per_s']:9.1f} model tokens/s  ({cached['seconds']:.2f}s, "
              f"{cached['model_tokens']} model tokens, {cached['turns_mean']:.1f} turns per episode)")
        print(f"  ratio {result['ratio_cache_over_reprefill']:.2f}  (KV-cache reuse / re-prefill, higher is better)")
    else:
        print("  KV-cache reuse         not measured: this engine's generate() takes no caches= (re-prefill only)")
    print(f"  single-turn ceiling    {single_tps:9.1f} tokens/s; ratio re-prefill / single-turn "
          f"{reprefill['tokens_per_s'] / single_tps:.2f}")


if __name__ == "__main__":
    main()
