"""The local launcher: every role in this process, no daemons, no ports.

`run_training(cfg)` runs SFT and DPO with their trainers, and RL (GRPO/RLOO/REINFORCE++, PPO) through the
runtime's coordinator with the in-process transport; `runtime.launcher: process | ray` hands RL to those
launchers instead. Either way the result is exported to `run_dir/adapter` (LoRA) or `run_dir/model`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import mlx.nn as nn

from lazarus.config import Config, ConfigError
from lazarus.data.trajectory import Trajectory
from lazarus.distributed.hub import ExperienceHub
from lazarus.runtime.build import (build_learner, build_trainer, ensure_data, needs_reference,  # noqa: F401
                                   prepare_model, resolve_rewards)
from lazarus.runtime.coordinator import Coordinator, TaskSource


def run_training(cfg: Config, resume: str | Path | None = None, force: bool = False) -> dict:
    """Train per `cfg`; export the result to `run_dir/adapter` (LoRA) or `run_dir/model` (full).

    The run directory is locked for the run; one that holds a previous run needs `resume` (continue it) or
    `force` (start over), checked before anything is written.
    """
    from lazarus.runtime.replicas import check_data_parallel
    from lazarus.training.rundir import prepare_run_dir

    check_data_parallel(cfg)  # training.learners > 1 is for GRPO; never silently one learner
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
    # the answer as the reward reads it: accuracy_strict has no last-number fallback
    fallback = reward != "accuracy_strict"
    result["extracted"] = [extract_answer(c, last_number_fallback=fallback) for c in result["completions"]]
    return result


# --- RL with every role in this process: the in-process transport is the hub called directly ----------


def trajectory_nbytes(trajectories: list[Trajectory]) -> int:
    return sum(t.prompt_ids.nbytes + t.completion_ids.nbytes * 3 for t in trajectories)


def local_pump(hub: ExperienceHub, actors: list) -> Callable[[], bool]:
    """Run one queued task on each in-process actor; False when there was nothing to run."""

    def pump() -> bool:
        ran = False
        for actor in actors:
            lease = hub.next_task(actor.actor_id)
            if lease is None:
                continue
            actor.sync_weights()
            trajectories = actor.run_task(lease.task)
            hub.push(actor.actor_id, lease.task.task_id, trajectories, nbytes=trajectory_nbytes(trajectories),
                     stats={**actor.stats.as_heartbeat(), "generation_s": actor.stats.generation_s})
            ran = True
        return ran

    return pump


def local_roles(cfg: Config, incarnation: str = "local"):
    """(learner, actor, tasks) in this process: the actor samples with the learner's own model object."""
    from lazarus.runtime.build import read_rl_prompts
    from lazarus.runtime.roles import RolloutActor, SharedWeights, env_worker_scorer

    ensure_data(cfg)
    learner = build_learner(cfg)
    records, prompt_ids = read_rl_prompts(cfg, learner.tokenizer)
    actor = RolloutActor("local", learner.model, learner.tokenizer, learner.reward_functions,
                         SharedWeights(lambda: learner.policy_version), stop=list(cfg.generation.stop),
                         completion_batch_size=cfg.training.batch_size * cfg.generation.num_generations,
                         merge_adapters=cfg.lora.merge_for_sampling,
                         scorer=env_worker_scorer(cfg.runtime.env_workers))
    actor.sync_weights()
    return learner, actor, TaskSource(cfg, records, prompt_ids, incarnation)


def run_local(cfg: Config, resume: str | Path | None = None, echo: Callable[[str], None] = print):
    """RL with every role in this process: the coordinator pumps one actor that shares the learner's model."""
    from lazarus.runtime.replicas import check_data_parallel, open_replicas, process_spawner

    check_data_parallel(cfg)
    learner, actor, tasks = local_roles(cfg)
    hub = ExperienceHub("local", lambda: learner.policy_version, lease_s=cfg.runtime.lease_s,
                        max_queue_bytes=cfg.runtime.max_queue_bytes)
    coordinator = Coordinator(cfg, learner, tasks, hub, pump=local_pump(hub, [actor]), echo=echo, actors=1)
    replicas = None
    try:
        if cfg.training.learners > 1:  # training.learners: the other replicas are processes on loopback
            coordinator.open(resume)
            try:
                replicas = open_replicas(cfg, learner, process_spawner(echo=echo), echo=echo)
            except BaseException:
                learner.close()  # coordinator.run would have: it releases the run directory
                raise
        result = coordinator.run(resume)
    finally:
        if replicas is not None:
            replicas.close()
        if hasattr(actor.scorer, "close"):
            actor.scorer.close()
    return learner, result
