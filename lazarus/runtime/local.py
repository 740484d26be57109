"""The local launcher: every role in this process, no daemons, no ports.

`run_training(cfg)` runs SFT and DPO with their trainers, and RL (GRPO/RLOO/REINFORCE++, PPO) through the
runtime's coordinator with the in-process transport; `runtime.launcher: process | ray` hands RL to those
launchers instead. Either way the result is exported to `run_dir/adapter` (LoRA) or `run_dir/model`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlx.nn as nn

from lazarus.config import Config, ConfigError
from lazarus.runtime.build import (build_learner, build_trainer, ensure_data, needs_reference,  # noqa: F401
                                   prepare_model, resolve_rewards)


def run_training(cfg: Config, resume: str | Path | None = None, force: bool = False) -> dict:
    """Train per `cfg`; export the result to `run_dir/adapter` (LoRA) or `run_dir/model` (full).

    The run directory is locked for the run; one that holds a previous run needs `resume` (continue it) or
    `force` (start over), checked before anything is written.
    """
    from lazarus.training.rundir import prepare_run_dir

    if cfg.algorithm in ("grpo", "ppo") and cfg.runtime.launcher == "ray":
        # the learner runs as a Ray actor, maybe on another node: it takes the run directory's lock there
        from lazarus.runtime.ray_launcher import run_ray

        return run_ray(cfg, resume=resume, force=force)
    with prepare_run_dir(cfg, resume, force):
        return _run(cfg, resume)


def _run(cfg: Config, resume: str | Path | None) -> dict:
    if cfg.algorithm in ("grpo", "ppo"):
        launcher = cfg.runtime.launcher
        if launcher == "process":
            from lazarus.runtime.process import run_process

            return run_process(cfg, resume=resume)
        if launcher == "ray":
            from lazarus.runtime.ray_launcher import run_ray

            return run_ray(cfg, resume=resume)
        from lazarus.runtime.coordinator import run_local

        learner, result = run_local(cfg, resume=resume)
        export(learner.model, cfg, Path(cfg.training.run_dir))
        return result
    trainer = build_trainer(cfg)
    result = trainer.train(resume=resume)
    export(trainer.model, cfg, Path(cfg.training.run_dir))
    return result


def export(model: nn.Module, cfg: Config, run_dir: Path) -> Path:
    """The trained policy in a form `lazarus infer` and `mlx_lm.load` read."""
    from lazarus.models.lora import has_lora, save_adapter

    if has_lora(model):
        return save_adapter(model, run_dir / "adapter", metadata={"base_model": cfg.model.path})
    return save_model_dir(model, Path(cfg.model.path), run_dir / "model")


def save_model_dir(model: nn.Module, source: Path, out: Path) -> Path:
    """Weights of `model` plus config and tokenizer files copied from `source`, written atomically."""
    from mlx.utils import tree_flatten

    from lazarus.models.io import atomic_dir, save_safetensors

    if not source.is_dir():
        raise ConfigError(f"model.path: exporting full weights needs a model directory, not {source}")
    with atomic_dir(out) as tmp:
        for f in source.iterdir():
            if f.is_file() and not f.name.startswith("model") and f.suffix in (".json", ".txt", ".model", ".jinja"):
                shutil.copy2(f, tmp / f.name)
        save_safetensors(tmp / "model.safetensors", dict(tree_flatten(model.parameters())), {"format": "mlx"})
    return out


def run_eval(model_path: str, adapter: str | None, data: str, reward: str, num_prompts: int,
             max_new_tokens: int, temperature: float = 0.0, use_chat_template: bool = True,
             progress=None, dequantize: str = "auto") -> dict:
    """Mean `reward` of the model (plus adapter) on the first `num_prompts` prompts of `data`, greedy by default.

    `progress(line)` is called with a progress line every few dozen prompts; `dequantize` is `load`'s.
    The result also holds each completion, its reward and (for math rewards) the extracted answer.
    """
    from lazarus.data.math import extract_answer
    from lazarus.data.records import read_prompts
    from lazarus.env.rewards import resolve_reward_function
    from lazarus.inference.engine import Engine
    from lazarus.models.load import load
    from lazarus.training.evaluate import evaluate

    try:
        fn = resolve_reward_function(reward)
    except ValueError as e:
        raise ConfigError(f"--reward: {e}") from None
    model, tokenizer = load(model_path, adapter=adapter, dequantize=dequantize)
    records = read_prompts(data)[:num_prompts]
    result = evaluate(Engine(model, tokenizer), tokenizer, records, fn, max_new_tokens=max_new_tokens,
                      temperature=temperature, use_chat_template=use_chat_template, progress=progress)
    result["prompts"] = [r.prompt for r in records]
    result["answers"] = [r.columns.get("answer") for r in records]
    result["extracted"] = [extract_answer(c) for c in result["completions"]]
    return result
